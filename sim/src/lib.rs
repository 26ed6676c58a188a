//! The discrete-event simulator: one training step of a `Plan` on a modelled cluster.
//!
//! Its job (issue "discrete-event simulator"): turn a plan into per-device task graphs (compute
//! from the op graph priced by a roofline with efficiency curves, communication decomposed
//! into point-to-point flows by collective algorithm), run them on an event engine with
//! max-min fair link sharing, and fill a `StepReport`. Nothing is implemented yet.
