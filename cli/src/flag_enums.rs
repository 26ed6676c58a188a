//! Flags whose value is one of a fixed set, as clap `ValueEnum`s: clap lists the values in
//! `--help` and in its error. The library enums they stand for do not depend on clap, so each
//! has a CLI-side twin here and a `From` into the library's type. [`lenient`] keeps the
//! library parsers' spellings: any case, surrounding blanks.

use std::ffi::OsStr;
use std::marker::PhantomData;

use clap::builder::{EnumValueParser, PossibleValue, TypedValueParser};
use clap::ValueEnum;
use pangu_strategies::strategy::Axis;
use pangu_strategies::strategy::CpComm;
use pangu_strategies::{
    Attention, BackwardPrefetch, GatherPrecision, GradAccumulation, OptShard, Precision, RankOrder,
};
use pangu_twin::Estimate;

/// The value parser of a `ValueEnum` flag that takes its names in any case and with
/// surrounding blanks, as the library's `FromStr` does; clap's own error otherwise.
pub(crate) fn lenient<E: ValueEnum + Clone + Send + Sync + 'static>() -> Lenient<E> {
    Lenient(PhantomData)
}

/// See [`lenient`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lenient<E>(PhantomData<E>);

impl<E: ValueEnum + Clone + Send + Sync + 'static> TypedValueParser for Lenient<E> {
    type Value = E;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<E, clap::Error> {
        if let Some(v) = value
            .to_str()
            .and_then(|s| E::from_str(s.trim(), true).ok())
        {
            return Ok(v);
        }
        EnumValueParser::<E>::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            E::value_variants()
                .iter()
                .filter_map(ValueEnum::to_possible_value),
        ))
    }
}

/// A CLI twin of a library enum of unit variants with the same names.
macro_rules! flag_enum {
    ($(#[$m:meta])* $name:ident => $lib:ident { $($(#[$vm:meta])* $v:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
        pub(crate) enum $name {
            $($(#[$vm])* $v,)*
        }

        impl From<$name> for $lib {
            fn from(v: $name) -> $lib {
                match v {
                    $($name::$v => $lib::$v,)*
                }
            }
        }
    };
}

flag_enum!(
    /// `--precision`.
    PrecisionFlag => Precision {
        /// fp16 compute with fp32 master weights (mixed precision).
        Fp16,
        /// bf16 compute with fp32 master weights.
        Bf16,
        /// fp32 everywhere.
        Fp32,
        /// Transformer Engine's fp8 recipe: bf16 with the layers' linear GEMMs in fp8 (chips
        /// with an fp8 rate, e.g. H100).
        Fp8,
    }
);

flag_enum!(
    /// `--opt-shard`.
    OptShardFlag => OptShard {
        /// Nothing sharded: gradients all-reduced.
        None,
        /// Optimizer states sharded (ZeRO-1).
        Zero1,
        /// States and gradients sharded (ZeRO-2).
        Zero2,
        /// Weights and states sharded, weights gathered before use (MindSpore's optimizer
        /// parallel).
        Mindspore,
        /// Weights, gradients and states sharded; weights gathered for forward and backward
        /// (ZeRO-3).
        Zero3,
    }
);

flag_enum!(
    /// `--zero3-gather`.
    GatherFlag => GatherPrecision {
        /// The training precision.
        Compute,
        /// The fp32 master weights (FSDP with fp32 `param_dtype`).
        Fp32,
    }
);

flag_enum!(
    /// `--zero3-prefetch`.
    PrefetchFlag => BackwardPrefetch {
        /// The next gather overlaps this part's backward (FSDP `BACKWARD_PRE`).
        Pre,
        /// Gathered after this part's backward (FSDP `BACKWARD_POST`).
        Post,
    }
);

flag_enum!(
    /// `--grad-accumulation`.
    GradAccumulationFlag => GradAccumulation {
        /// The weight-gradient product adds into the gradient buffer (Megatron-core's default).
        Fused,
        /// A separate add pass per weight and micro-batch (`--no-gradient-accumulation-fusion`).
        Separate,
    }
);

flag_enum!(
    /// `--attention`.
    AttentionFlag => Attention {
        /// One fused kernel that keeps no s×s matrix (FlashAttention).
        Flash,
        /// Separate softmax and dropout kernels; the s×s scores are written and kept.
        #[value(alias = "materialized")]
        Materialised,
    }
);

flag_enum!(
    /// `--cp-comm`.
    CpCommFlag => CpComm {
        /// Megatron-core's p2p ring, overlapped with attention.
        Ring,
        /// Llama 3's all-gather of K/V before attention.
        AllGather,
    }
);

flag_enum!(
    /// `twin check --machine`: which machine to compare on a shared host.
    MachineFlag => Estimate {
        /// Median probe, median run.
        Typical,
        /// Fastest probe, fastest run.
        Quiet,
    }
);

/// `--rank-order`: the three axes, slowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RankOrderFlag {
    /// PanGu-α's: a tensor-parallel group is consecutive ranks.
    PpDpTp,
    /// A data-parallel replica's stages on consecutive ranks (the PanGu-α paper's Fig. 5).
    DpPpTp,
    /// Pipeline slowest, data-parallel fastest.
    PpTpDp,
    /// Tensor-parallel slowest, data-parallel fastest.
    TpPpDp,
    /// Data-parallel slowest, pipeline fastest.
    DpTpPp,
    /// Tensor-parallel slowest, pipeline fastest.
    TpDpPp,
}

impl From<RankOrderFlag> for RankOrder {
    fn from(o: RankOrderFlag) -> RankOrder {
        use Axis::{Dp, Pp, Tp};
        RankOrder(match o {
            RankOrderFlag::PpDpTp => [Pp, Dp, Tp],
            RankOrderFlag::DpPpTp => [Dp, Pp, Tp],
            RankOrderFlag::PpTpDp => [Pp, Tp, Dp],
            RankOrderFlag::TpPpDp => [Tp, Pp, Dp],
            RankOrderFlag::DpTpPp => [Dp, Tp, Pp],
            RankOrderFlag::TpDpPp => [Tp, Dp, Pp],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each flag value converts to the library value of the same name.
    fn same_names<F, L>()
    where
        F: ValueEnum + Copy + Into<L>,
        L: std::fmt::Display,
    {
        for v in F::value_variants() {
            let name = v.to_possible_value().map(|p| p.get_name().to_string());
            let lib: L = (*v).into();
            assert_eq!(name, Some(lib.to_string()));
        }
    }

    #[test]
    fn every_flag_value_names_its_library_value() {
        same_names::<PrecisionFlag, Precision>();
        same_names::<OptShardFlag, OptShard>();
        same_names::<GatherFlag, GatherPrecision>();
        same_names::<PrefetchFlag, BackwardPrefetch>();
        same_names::<GradAccumulationFlag, GradAccumulation>();
        same_names::<RankOrderFlag, RankOrder>();
        same_names::<CpCommFlag, CpComm>();
        assert_eq!(
            RankOrderFlag::value_variants().len(),
            RankOrder::all().len()
        );
        assert_eq!(OptShardFlag::value_variants().len(), OptShard::ALL.len());
        assert_eq!(PrecisionFlag::value_variants().len(), Precision::ALL.len());
    }

    #[test]
    fn the_old_spellings_still_parse() -> Result<(), clap::Error> {
        let cmd = clap::Command::new("t");
        let parse = |s: &str| lenient::<RankOrderFlag>().parse_ref(&cmd, None, OsStr::new(s));
        assert_eq!(parse(" DP-PP-TP ")?, RankOrderFlag::DpPpTp);
        assert!(parse("dp-dp-tp").is_err());
        Ok(())
    }
}
