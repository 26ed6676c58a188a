//! Errors and mappings of the launch readers; the public example lines are in
//! `tests/launch.rs`.

use super::error::unmodelled;
use super::*;
use crate::strategy::{Precision, Remat, ScheduleKind};

const SHAPE: &str = "--num-layers 8 --hidden-size 512 --num-attention-heads 8 --seq-length 1024 \
                     --vocab-size 32000 --global-batch-size 64";

fn err(line: &str) -> String {
    Launch::from_megatron(line).unwrap_err().to_string()
}

#[test]
fn shell_variables_are_errors_naming_argument_and_variable() {
    let e = Launch::from_megatron("--tensor-model-parallel-size $TP").unwrap_err();
    assert_eq!(
        e,
        LaunchError::ShellVariable {
            argument: "--tensor-model-parallel-size".into(),
            variable: "$TP".into()
        }
    );
    let e = err(&format!("{SHAPE} --pipeline-model-parallel-size=${{PP}}"));
    assert!(
        e.contains("--pipeline-model-parallel-size") && e.contains("${PP}"),
        "{e}"
    );
    // A bare expansion (an unexpanded array) names itself and the argument before it.
    let e = err("--fp16 ${GPT_ARGS[@]}");
    assert!(e.contains("${GPT_ARGS[@]}") && e.contains("--fp16"), "{e}");
    // Ignored arguments may keep theirs: they are listed, not read.
    let l = Launch::from_megatron(&format!("{SHAPE} --data-path $DATA_PATH")).unwrap();
    assert!(l.ignored.contains(&"--data-path $DATA_PATH".to_string()));
}

#[test]
fn expert_parallelism_is_refused_by_name() {
    for (arg, named) in [
        ("--num-experts 8", "--num-experts 8"),
        (
            "--expert-model-parallel-size 4",
            "--expert-model-parallel-size 4",
        ),
        ("--moe-router-topk 2", "--moe-router-topk 2"),
    ] {
        let e = err(&format!("{SHAPE} {arg}"));
        assert!(e.contains(named) && e.contains("mixture-of-experts"), "{e}");
    }
    // Megatron-DeepSpeed's dense scripts pass one expert.
    let l = Launch::from_megatron(&format!("{SHAPE} --num-experts 1")).unwrap();
    assert!(l.notes.iter().any(|n| n.contains("dense")));
}

#[test]
fn malformed_numbers_and_values_name_the_argument() {
    let e = err(&format!("{SHAPE} --tensor-model-parallel-size eight"));
    assert!(
        e.contains("--tensor-model-parallel-size")
            && e.contains("\"eight\"")
            && e.contains("whole number"),
        "{e}"
    );
    let e = err(&format!("{SHAPE} --hidden-dropout high"));
    assert!(e.contains("--hidden-dropout"), "{e}");
    let e = err(&format!("{SHAPE} --normalization BatchNorm"));
    assert!(e.contains("RMSNorm"), "{e}");
    assert!(err("--micro-batch-size").contains("--micro-batch-size needs a value"));
    assert!(err("--lr 'open").contains("unterminated"));
    let e = Launch::from_deepspeed(r#"{"train_batch_size": "lots"}"#, "ds.json").unwrap_err();
    assert!(e.to_string().contains("train_batch_size"), "{e}");
    let e =
        Launch::from_deepspeed(r#"{"zero_optimization": {"stage": 4}}"#, "ds.json").unwrap_err();
    assert!(
        e.to_string().contains("zero_optimization.stage") && e.to_string().contains("0, 1, 2 or 3"),
        "{e}"
    );
    let e = Launch::from_deepspeed("{ not json", "ds.json").unwrap_err();
    assert!(e.to_string().contains("ds.json"), "{e}");
}

#[test]
fn unreadable_files_name_the_path() {
    let e = Launch::from_megatron_file(Path::new("/nonexistent/args.txt")).unwrap_err();
    assert!(
        e.to_string().contains("/nonexistent/args.txt") && e.to_string().contains("Megatron"),
        "{e}"
    );
    let e = Launch::from_deepspeed_file(Path::new("/nonexistent/ds.json")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ds.json"), "{e}");
}

#[test]
fn context_parallelism_and_fp8_map_and_the_rest_is_refused_in_one_place() {
    let l = Launch::from_megatron(&format!(
        "{SHAPE} --context-parallel-size 2 --cp-comm-type all_gather --bf16 --fp8-format hybrid"
    ))
    .unwrap();
    assert_eq!(l.spec.cp, Some(2));
    assert_eq!(l.spec.cp_comm, Some(crate::strategy::CpComm::AllGather));
    assert_eq!(l.spec.precision, Some(Precision::Fp8));
    let e = err(&format!(
        "{SHAPE} --context-parallel-size 2 --cp-comm-type a2a"
    ));
    assert_eq!(
        e,
        unmodelled("cp-comm-type", "--cp-comm-type a2a").to_string()
    );
    let e = err(&format!("{SHAPE} --bf16 --fp8-format=e5m2"));
    assert!(e.contains("e5m2") && e.contains("hybrid"), "{e}");
}

#[test]
fn incomplete_shapes_and_batches_say_what_to_add() {
    assert!(err("--num-layers 8 --hidden-size 512").contains("--num-attention-heads"));
    let e = err(
        "--num-layers 8 --hidden-size 512 --num-attention-heads 8 --seq-length 64 --vocab-size 100",
    );
    assert!(e.contains("--global-batch-size"), "{e}");
    let e = err("--num-layers 8 --hidden-size 512 --num-attention-heads 8 --seq-length 64 --global-batch-size 8 \
                 --tokenizer-type SentencePieceTokenizer");
    assert!(e.contains("--vocab-size"), "{e}");
    let e = Launch::from_deepspeed(
        r#"{"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}"#,
        "ds.json",
    )
    .unwrap_err();
    assert!(e.to_string().contains("30 / 8"), "{e}");
}

#[test]
fn schedules_recompute_and_defaults() {
    let l = Launch::from_megatron(&format!(
        "{SHAPE} --pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 2 \
         --recompute-granularity full --recompute-method uniform --recompute-num-layers 2"
    ))
    .unwrap();
    assert_eq!(
        l.spec.schedule,
        Some(ScheduleKind::Interleaved { chunks: 2 })
    );
    assert_eq!(l.spec.remat, Some(Remat::Every(2)));
    let l = Launch::from_megatron(&format!("{SHAPE} --recompute-activations")).unwrap();
    assert_eq!(l.spec.remat, Some(Remat::Selective));
    let e = err(&format!(
        "{SHAPE} --pipeline-model-parallel-size 2 --recompute-granularity full --recompute-method block --recompute-num-layers 1"
    ));
    assert!(
        e.contains("first 1 layers") && e.contains("4 layers per stage"),
        "{e}"
    );
    // Megatron's defaults are written out, fp32 included.
    let l = Launch::from_megatron(SHAPE).unwrap();
    let m = l.model.as_ref().unwrap();
    assert_eq!((m.ffn, m.dropout, m.tied_embeddings), (2048, 0.1, true));
    assert_eq!(l.spec.precision, Some(Precision::Fp32));
    assert_eq!(l.spec.seq_len, Some(1024));
    assert!(l.pangu_flags().contains("--tp 1 --pp 1 --schedule 1f1b"));
    // SwiGLU's default FFN width: int(4·512·2/3 / 64)·64 = 1344.
    let l = Launch::from_megatron(&format!("{SHAPE} --swiglu")).unwrap();
    assert_eq!(l.model.unwrap().ffn, 1344);
    // Without a shape there is no model (it comes from --model).
    let l = Launch::from_megatron("--tensor-model-parallel-size 4 --bf16").unwrap();
    assert!(l.model.is_none());
}

#[test]
fn combining_checks_agreement() {
    let m = Launch::from_megatron(&format!("{SHAPE} --micro-batch-size 2 --bf16")).unwrap();
    let ds = Launch::from_deepspeed(
        r#"{"train_micro_batch_size_per_gpu": 4, "bf16": {"enabled": true}}"#,
        "ds.json",
    )
    .unwrap();
    let e = m.clone().combine(ds).unwrap_err().to_string();
    assert!(
        e.contains("micro-batch size") && e.contains('2') && e.contains('4'),
        "{e}"
    );
    let ds = Launch::from_deepspeed(
        r#"{"zero_optimization": {"stage": 2}, "bf16": {"enabled": true}}"#,
        "ds.json",
    )
    .unwrap();
    let c = m.combine(ds).unwrap();
    assert_eq!(c.spec.opt_shard, Some(OptShard::Zero2));
    assert!(c.model.is_some());
    let s = c.summary_notes();
    assert!(
        s.iter()
            .any(|n| n.contains("as pangu flags") && n.contains("--opt-shard zero2")),
        "{s:?}"
    );
    assert!(
        s.iter()
            .any(|n| n.contains("model as a TOML file") && n.contains("layers = 8")),
        "{s:?}"
    );
}

#[test]
fn the_attention_kernel_comes_from_flash_flags_and_the_backend() {
    use crate::strategy::Attention;
    let kind = |extra: &str| {
        Launch::from_megatron(&format!("{SHAPE} {extra}"))
            .unwrap()
            .spec
            .attention
    };
    assert_eq!(kind(""), None);
    for flash in [
        "--use-flash-attn",
        "--use-flash-attn-v2",
        "--use-flash-attn-triton",
        "--attention-backend flash",
        "--attention-backend fused",
        "--attention-backend auto",
        "--use-flash-attn --attention-backend flash",
    ] {
        assert_eq!(kind(flash), Some(Attention::Flash), "{flash}");
    }
    for unfused in ["--attention-backend unfused", "--attention-backend local"] {
        assert_eq!(kind(unfused), Some(Attention::Materialised), "{unfused}");
    }
    let l = Launch::from_megatron(&format!("{SHAPE} --use-flash-attn")).unwrap();
    assert!(l
        .notes
        .iter()
        .any(|n| n.starts_with("--use-flash-attn: attention flash")));
    assert!(l.pangu_flags().contains("--attention flash"));
    assert!(!l.ignored.iter().any(|i| i.contains("flash")));
    let e = err(&format!("{SHAPE} --attention-backend sdpa"));
    assert!(
        e.contains("--attention-backend") && e.contains("unfused"),
        "{e}"
    );
    let e = err(&format!(
        "{SHAPE} --use-flash-attn --attention-backend unfused"
    ));
    assert!(e.contains("disagree"), "{e}");
}

#[test]
fn tp_comm_overlap_maps_and_needs_sequence_parallelism() {
    let tp2 = format!("{SHAPE} --tensor-model-parallel-size 2");
    let l = Launch::from_megatron(&format!("{tp2} --sequence-parallel --tp-comm-overlap")).unwrap();
    assert_eq!(l.spec.tp_comm_overlap, Some(true));
    assert!(!l.ignored.iter().any(|a| a.contains("tp-comm-overlap")));
    let l = Launch::from_megatron(&format!("{tp2} --sequence-parallel")).unwrap();
    assert_eq!(l.spec.tp_comm_overlap, None);
    // Megatron-LM asserts sequence parallelism, which it turns off at tp 1.
    let e = err(&format!("{tp2} --tp-comm-overlap"));
    assert!(
        e.contains("--tp-comm-overlap needs --sequence-parallel"),
        "{e}"
    );
    let e = err(&format!("{SHAPE} --sequence-parallel --tp-comm-overlap"));
    assert!(e.contains("--tensor-model-parallel-size above 1"), "{e}");
}

#[test]
fn gradient_accumulation_fusion_maps_both_ways() {
    use crate::strategy::GradAccumulation;
    let l = Launch::from_megatron(&format!("{SHAPE} --no-gradient-accumulation-fusion")).unwrap();
    assert_eq!(l.spec.grad_accumulation, Some(GradAccumulation::Separate));
    assert!(!l.ignored.iter().any(|a| a.contains("accumulation")));
    assert!(
        l.pangu_flags().contains("--grad-accumulation separate"),
        "{}",
        l.pangu_flags()
    );
    // A flag: the next argument is not taken as its value.
    let l = Launch::from_megatron(&format!("--no-gradient-accumulation-fusion {SHAPE}")).unwrap();
    assert_eq!(l.spec.grad_accumulation, Some(GradAccumulation::Separate));
    let l = Launch::from_megatron(&format!("{SHAPE} --gradient-accumulation-fusion")).unwrap();
    assert_eq!(l.spec.grad_accumulation, Some(GradAccumulation::Fused));
    // Unsaid, the strategy's default (fused, Megatron-core's) applies.
    let l = Launch::from_megatron(SHAPE).unwrap();
    assert_eq!(l.spec.grad_accumulation, None);
}

#[test]
fn megatron_pipeline_sends_block_unless_overlapped() {
    let pp = format!("{SHAPE} --pipeline-model-parallel-size 2");
    let l = Launch::from_megatron(&pp).unwrap();
    assert_eq!(l.spec.p2p_blocking, Some(true));
    assert!(
        l.pangu_flags().contains("--p2p-blocking true"),
        "{}",
        l.pangu_flags()
    );
    // A flag: the next argument is not taken as its value, and nothing is left ignored.
    let l = Launch::from_megatron(&format!("--overlap-p2p-communication {pp}")).unwrap();
    assert_eq!(l.spec.p2p_blocking, None);
    assert!(!l.ignored.iter().any(|a| a.contains("p2p")));
    // Without a pipeline there is nothing to send.
    assert_eq!(
        Launch::from_megatron(SHAPE).unwrap().spec.p2p_blocking,
        None
    );
}
