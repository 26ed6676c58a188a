//! The executor: trains the PanGu-α architecture for real, on CPU, with the same `Plan` the
//! simulator prices.
//!
//! Its job (issues "trainer" and "distributed executor"): fp32 tensor kernels with explicit
//! forward and backward per layer, the model (embeddings, blocks, query layer, tied head,
//! loss), the jieba + Unigram tokenizer and packed data, AdamW with warm-up and cosine decay,
//! checkpoints, and a `Communicator` with threads and MPI backends that interprets the plan's
//! pipeline action lists and collectives. It depends on `pangu-strategies` and never on the
//! simulator. Nothing is implemented yet.
