//! Public example launch configurations produce the same plan as the hand-written `pangu`
//! flags. Each line below is the argument list of a public script, copied with the script's
//! own variable values written in (the tool does not expand shell variables); the repository,
//! path and commit read are cited above each.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_strategies::launch::Launch;
use pangu_strategies::{resolve_inputs, Plan, StrategySpec};

/// NVIDIA/Megatron-LM examples/gpt3/train_gpt3_175b_distributed.sh (commit 157006d6).
const GPT3_175B: &str = r#"
    --num-layers 96
    --hidden-size 12288
    --num-attention-heads 96
    --seq-length 2048
    --max-position-embeddings 2048
    --attention-backend auto # Can use (flash/fused/unfused/local)
    --micro-batch-size 1
    --global-batch-size 1536
    --rampup-batch-size 16 16 5859375
    --train-iters 500000
    --weight-decay 0.1
    --adam-beta1 0.9
    --adam-beta2 0.95
    --init-method-std 0.006
    --clip-grad 1.0
    --fp16
    --lr 6.0e-5
    --lr-decay-style cosine
    --min-lr 6.0e-6
    --lr-warmup-fraction .001
    --lr-decay-iters 430000
    --tensor-model-parallel-size 8
    --pipeline-model-parallel-size 16
    --data-path /data/my-gpt3_00_text_document
    --vocab-file /data/gpt2-vocab.json
    --merge-file /data/gpt2-merges.txt
    --split 949,50,1
    --log-interval 100
    --save-interval 10000
    --eval-interval 1000
    --save /ckpt
    --load /ckpt
    --eval-iters 10
    --tensorboard-dir /tb
"#;

/// NVIDIA/Megatron-LM examples/llama/train_llama3_8b_h100_fp8.sh (commit 157006d6): its
/// MODEL_ARGS, TRAINING_ARGS (with DDP_ARGS), MODEL_PARALLEL_ARGS and the mock-data
/// DATA_ARGS_LIST, quoted as the script's array elements are; DTYPE_ARGS is the fp8 part.
const LLAMA3_8B: &str = r#"
    --use-mcore-models
    --num-layers 32
    --hidden-size 4096
    --ffn-hidden-size 14336
    --num-attention-heads 32
    --group-query-attention
    --num-query-groups 8
    --kv-channels 128
    --seq-length 8192
    --max-position-embeddings 8192
    --position-embedding-type rope
    --rotary-base 1000000
    --rotary-percent 1.0
    --attention-dropout 0.0
    --hidden-dropout 0.0
    --swiglu
    --init-method-std 0.0134
    --attention-backend fused
    --apply-layernorm-1p
    --untie-embeddings-and-output-weights
    --disable-bias-linear
    --micro-batch-size 1
    --global-batch-size 128
    --train-samples 1953125000
    --lr-decay-samples 1949218748
    --lr-warmup-samples 3906252
    --lr 0.00015
    --min-lr 0.00001
    --decoupled-lr 5.0e-4      # Specific to decoupled AdamW, ensure optimizer is compatible
    --decoupled-min-lr 4.5e-5  # Specific to decoupled AdamW
    --lr-decay-style cosine
    --clip-grad 1.0
    --weight-decay 0.1
    --adam-beta1 0.9
    --adam-beta2 0.95
    --bf16
    --grad-reduce-in-bf16
    --cross-entropy-loss-fusion
    --calculate-per-token-loss
    --manual-gc
    --empty-unused-memory-level 1
    --exit-duration-in-mins 235
    --use-distributed-optimizer
    --overlap-grad-reduce
    --overlap-param-gather
    --tensor-model-parallel-size 1
    --context-parallel-size 1
    --sequence-parallel  # Always enable sequence parallelism with TP_SIZE=2
    "--mock-data"
    "--tokenizer-type NullTokenizer"
    "--vocab-size 128256"
    "--data-cache-path /work/benchmark_cache_llama3_8b_fp8"
    "--tiktoken-pattern v2"
    "--split '99,1,0'"
    "--no-create-attention-mask-in-dataloader"
    "--no-mmap-bin-files"
    "--num-workers 1"
"#;

/// The same script's DTYPE_ARGS (DTYPE="fp8").
const LLAMA3_8B_FP8: &str = r#"
    "--fp8-format hybrid"
    "--fp8-amax-history-len 1024"
    "--fp8-amax-compute-algo max"
    "--fp8-param-gather"
"#;

/// examples/llama/train_llama3.sh as stored for NVIDIA/Megatron-LM at commit 08954616
/// (the ROCm variant, "Copyright (c) 2024, Advanced Micro Devices"), MODEL_SIZE=70 with its
/// defaults (TP 8, PP 1, CP 1, MBS 1, BS 8, SEQ_LENGTH 2048) and RECOMPUTE=1: GPT_ARGS,
/// DATA_ARGS (mock data), OUTPUT_ARGS, EXTRA_ARGS, TRAIN_ARGS.
const LLAMA3_70B: &str = r#"
    --tensor-model-parallel-size 8 \
    --pipeline-model-parallel-size 1 \
    --context-parallel-size 1 \
    --num-layers 80 \
    --hidden-size 8192 \
    --ffn-hidden-size 28672 \
    --num-attention-heads 64 \
    --seq-length 2048 \
    --max-position-embeddings 131072 \
    --untie-embeddings-and-output-weights \
    --position-embedding-type rope \
    --no-position-embedding \
    --swiglu \
    --disable-bias-linear \
    --init-method-std 0.02 \
    --attention-dropout 0.0 \
    --hidden-dropout 0.0 \
    --normalization RMSNorm \
    --micro-batch-size 1 \
    --global-batch-size 8 \
    --train-iters 12 \
    --no-async-tensor-model-parallel-allreduce \
    --bf16 \
    --no-masked-softmax-fusion \
    --recompute-num-layers 80 \
        --recompute-granularity full \
        --recompute-method block \
    --tokenizer-type HuggingFaceTokenizer \
    --tokenizer-model NousResearch/Meta-Llama-3-8B \
    --dataloader-type cyclic \
    --save-interval 200000 \
    --tensorboard-dir experiment/log \
    --log-interval 1 \
    --eval-interval 320000 \
    --eval-iters 10 \
    --num-workers 8 \
    --mock-data \
    --log-interval 1 \
    --log-throughput \
    --no-save-optim \
    --no-save-rng \
    --eval-iters -1 \
    --group-query-attention \
    --num-query-groups 8 \
    --no-gradient-accumulation-fusion \
    --distributed-backend nccl \
    --distributed-timeout-minutes 120 \
    --overlap-grad-reduce \
    --rerun-mode disabled \
    --use-distributed-optimizer --overlap-param-gather \
    --use-flash-attn \
    --sequence-parallel \
    --use-mcore-models \
    --lr 1e-4 \
    --min-lr 1e-5 \
    --lr-decay-iters 320000 \
    --lr-decay-style cosine \
    --weight-decay 1.0e-1 \
    --clip-grad 1.0 \
    --optimizer adam \
        --adam-beta1 0.9 \
        --adam-beta2 0.95
"#;

/// microsoft/Megatron-DeepSpeed examples_deepspeed/pretrain_llama2_distributed.sh (commit
/// b644fba3), TP=2 PP=2 ZERO_STAGE=0, activation_checkpoint="false", the `torchrun` line.
/// Its tokenizer (GPTSentencePieceTokenizer on Llama's tokenizer.model) has its size in the
/// file, so `--vocab-size 32000` (Llama 2's) is appended, as the error message asks.
const LLAMA2_DS: &str = r#"
torchrun --nproc_per_node 8 --nnodes 1 --node_rank 0 --master_addr localhost --master_port 6000 \
       pretrain_gpt.py \
       --tensor-model-parallel-size 2 \
       --pipeline-model-parallel-size 2 \
       --num-layers 24 \
       --hidden-size 2048 \
       --ffn-hidden-size 5504 \
       --num-attention-heads 16 \
       --micro-batch-size 4 \
       --global-batch-size 32 \
       --seq-length 2048 \
       --max-position-embeddings 2048 \
       --train-iters 250000 \
       --save ./tmp \
       --load ./tmp \
       --data-path 1 ./tmp/data/bookcorpus_train_1m_text_sentence \
       --data-impl mmap \
       --tokenizer-type GPTSentencePieceTokenizer \
       --tokenizer-model ./tmp/tokenizer.model \
       --split 949,50,1 \
       --distributed-backend nccl \
       --lr 3e-4 \
       --lr-decay-style cosine \
       --min-lr 3e-5 \
       --weight-decay 0.1 \
       --clip-grad 1 \
       --lr-warmup-iters 2000 \
       --optimizer adam \
       --adam-beta1 0.9 \
       --adam-beta2 0.95 \
       --log-interval 1 \
       --save-interval 10000 \
       --eval-interval 1000 \
       --eval-iters 10 \
       --bf16 \
       --no-query-key-layer-scaling \
       --attention-dropout 0 \
       --hidden-dropout 0 \
       --use-rotary-position-embeddings \
       --untie-embeddings-and-output-weights \
       --swiglu \
       --normalization rmsnorm \
       --disable-bias-linear \
       --num-key-value-heads 4 \
       --zero-stage=0 --deepspeed_config=./tmp/deepspeed.json --deepspeed \
       --vocab-size 32000
"#;

/// The DeepSpeed config the same script writes (its heredoc, values substituted).
const LLAMA2_DS_CONFIG: &str = r#"{
  "train_batch_size" : 32,
  "train_micro_batch_size_per_gpu": 4,
  "steps_per_print": 1,
  "zero_optimization": {
    "stage": 0
  },
  "bf16": {
    "enabled": true
  }
}"#;

/// microsoft/Megatron-DeepSpeed examples_deepspeed/rebase/ds_pretrain_gpt_1.3B.sh (commit
/// 77ecb167): megatron_options, data_options and deepspeed_options with mp_size=2,
/// pp_size=2, zero_stage=1, batch_size=2, global_batch_size=512, activation_checkpoint=true.
const GPT_1_3B_DS: &str = r#"
    --override-opt_param-scheduler \
    --adam-beta1 0.9 \
    --adam-beta2 0.95 \
    --tensor-model-parallel-size 2 \
    --init-method-std 0.013 \
    --lr-decay-tokens 300000000000 \
    --lr-warmup-tokens 3000000000 \
    --micro-batch-size 2 \
    --exit-duration-in-mins 30000000 \
    --global-batch-size 512 \
    --num-layers 24 \
    --hidden-size 2048 \
    --num-attention-heads 16 \
    --seq-length 2048 \
    --max-position-embeddings 2048 \
    --train-tokens 300000000000 \
    --train-samples 292968750 \
    --lr 2.0e-4 \
    --min-lr 1.0e-6 \
    --lr-decay-style cosine \
    --split 949,50,1 \
    --log-interval 10 \
    --eval-interval 100 \
    --eval-iters 10 \
    --save-interval 100 \
    --weight-decay 0.1 \
    --clip-grad 1.0 \
    --hysteresis 2 \
    --num-workers 0 \
    --fp16 \
    --seed 1234 \
    --load /blob/checkpoint \
    --save /blob/checkpoint \
    --no-async-tensor-model-parallel-allreduce \
    --tensorboard-queue-size 1 \
    --log-timers-to-tensorboard \
    --log-batch-size-to-tensorboard \
    --log-validation-ppl-to-tensorboard \
    --tensorboard-dir /vc_data/tensorboard \
    --checkpoint-activations \
    --log-optimizer-states-to-tensorboard \
    --vocab-file gpt2-vocab.json \
    --merge-file gpt2-merges.txt \
    --data-path /vc_data_blob/the_pile_public_merged_nopreprocessing/pile_text_document \
    --data-impl mmap \
    --deepspeed \
    --deepspeed_config ds_config_gbs512_mbs2_log10_zero1.json \
    --zero-stage 1 \
    --pipeline-model-parallel-size 2 \
    --deepspeed-activation-checkpointing
"#;

/// microsoft/DeepSpeedExamples Megatron-LM/scripts/ds_zero2_config.json (commit 26b89cc6).
const DS_ZERO2: &str = r#"{
  "train_batch_size":16,
  "gradient_accumulation_steps": 1,
  "steps_per_print": 1,
  "zero_optimization": {
    "stage":2
  },
  "optimizer": {
    "type": "Adam",
    "params": {
      "lr": 0.00015
    }
  },
  "gradient_clipping": 1.0,
  "fp16": {
    "enabled": true,
    "loss_scale": 0,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "min_loss_scale": 1
  },
  "activation_checkpointing": {
    "partition_activations":true,
    "contiguous_memory_optimization":false
  },
  "wall_clock_breakdown": false
}"#;

/// microsoft/DeepSpeedExamples Megatron-LM-v1.1.5-ZeRO3/examples/ds_zero_stage_3_config.json
/// (commit 44be774a).
const DS_ZERO3: &str = r#"{
  "train_micro_batch_size_per_gpu": 8,
  "gradient_accumulation_steps": 1,
  "steps_per_print": 10,
  "zero_optimization": {
    "stage": 3,
    "stage3_max_live_parameters": 1.000000e+09,
    "stage3_max_reuse_distance": 1.000000e+09,
    "stage3_prefetch_bucket_size": 6.039798e+07,
    "stage3_param_persitence_threshold": 8.192000e+04,
    "reduce_bucket_size": 6.710886e+07,
    "contiguous_gradients": true
  },
  "gradient_clipping": 1.0,
  "fp16": {
    "enabled": true,
    "loss_scale": 0,
    "initial_scale_power": 10,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "min_loss_scale": 1
  },
  "wall_clock_breakdown": true,
  "zero_allow_untested_optimizer": false
}"#;

/// microsoft/Megatron-DeepSpeed examples_deepspeed/rebase/ds_config_gbs256_mbs8_log1_zero1.json
/// (commit 79b8e228).
const DS_ZERO1: &str = r#"{
  "train_batch_size": 256,
  "train_micro_batch_size_per_gpu": 8,
  "steps_per_print": 1,

  "zero_optimization": {
    "stage": 1
  },

  "gradient_clipping": 1.0,
  "prescale_gradients": false,

  "fp16": {
    "enabled": true,
    "loss_scale": 0,
    "loss_scale_window": 500,
    "hysteresis": 2,
    "min_loss_scale": 1,
    "initial_scale_power": 11
  },

  "wall_clock_breakdown" : false
}"#;

/// The plan a front end builds: the model (the launch's, else `preset`) with the spec's
/// training length, the spec over the model's reference, on `cluster`.
fn plan(model: &ModelConfig, cluster: &str, spec: &StrategySpec) -> Plan {
    let model = spec.model_for(model).unwrap();
    let cluster = Cluster::from_name(cluster).unwrap();
    let r = resolve_inputs(&model, Some(cluster), spec).unwrap_or_else(|e| panic!("{e}"));
    Plan::build(&r.model, &r.cluster, &r.strategy).unwrap_or_else(|e| panic!("{e}"))
}

/// The launch's plan equals the hand-written one: same strategy, same parameter count, same
/// padded vocabulary and sequence length, same per-stage memory.
fn assert_same(launch: &Launch, preset: Option<&str>, cluster: &str, hand_model: &str, hand: &str) {
    let preset_model = preset.map(|p| ModelConfig::preset(p).unwrap());
    let model = launch.model.as_ref().or(preset_model.as_ref()).unwrap();
    let got = plan(model, cluster, &launch.spec);
    let hand_model = match preset_model.as_ref() {
        Some(m) if hand_model.is_empty() => m.clone(),
        _ => ModelConfig::from_toml(hand_model, "hand.toml").unwrap(),
    };
    let want = plan(
        &hand_model,
        cluster,
        &StrategySpec::from_toml(hand, "hand").unwrap(),
    );
    assert_eq!(got.strategy.summary(), want.strategy.summary());
    assert_eq!(got.strategy, want.strategy);
    assert_eq!(got.model.params().total, want.model.params().total);
    assert_eq!(
        (got.padded_vocab, got.model.seq_len),
        (want.padded_vocab, want.model.seq_len)
    );
    let mem = |p: &Plan| p.stages.iter().map(|s| s.memory).collect::<Vec<_>>();
    assert_eq!(mem(&got), mem(&want));
}

fn model_toml(body: &str) -> String {
    format!("name = \"hand\"\nquery_layer = false\n{body}")
}

#[test]
fn megatron_gpt3_175b() {
    let l = Launch::from_megatron(GPT3_175B).unwrap();
    let m = model_toml(
        "layers = 96\nhidden = 12288\nheads = 96\nffn = 49152\nvocab = 50257\nseq_len = 2048\n\
         dropout = 0.1\nglobal_batch = 1536\n",
    );
    // Megatron's pipeline sends block the stage (no --overlap-p2p-communication).
    let hand = "tp = 8\npp = 16\nmicro_batch_size = 1\nglobal_batch = 1536\nprecision = \"fp16\"\n\
                attention = \"flash\"\np2p_blocking = true\n";
    assert_same(&l, None, "dgx-a100-80g:1024", &m, hand);
    assert!((l.model.as_ref().unwrap().params().total as f64 - 175e9).abs() / 175e9 < 0.01);
    for ignored in [
        "--lr 6.0e-5",
        "--data-path",
        "--split 949,50,1",
        "--save /ckpt",
    ] {
        assert!(
            l.ignored.iter().any(|a| a.starts_with(ignored)),
            "{ignored}: {:?}",
            l.ignored
        );
    }
    assert!(
        l.notes.iter().any(|n| n.contains("ramp-up")),
        "{:?}",
        l.notes
    );
    assert!(l.notes.iter().any(|n| n.contains("GPT-2 BPE assumed")));
    let flags = l.pangu_flags();
    assert!(
        flags.contains("--tp 8 --pp 16")
            && flags.contains("--precision fp16")
            && flags.contains("--p2p-blocking true"),
        "{flags}"
    );
}

#[test]
fn megatron_llama3_8b_and_its_fp8_variant() {
    let l = Launch::from_megatron(LLAMA3_8B).unwrap();
    // NullTokenizer: 128256 plus its end-of-document token.
    let m = model_toml(
        "layers = 32\nhidden = 4096\nheads = 32\nkv_heads = 8\nffn = 14336\nffn_kind = \"swiglu\"\n\
         vocab = 128257\nseq_len = 8192\ntied_embeddings = false\nposition = \"rotary\"\n\
         bias = false\nglobal_batch = 128\n",
    );
    let hand = "tp = 1\nmicro_batch_size = 1\nglobal_batch = 128\nprecision = \"bf16\"\nopt_shard = \"zero1\"\n\
                attention = \"flash\"\n";
    assert_same(&l, None, "dgx-h100:8", &m, hand);
    assert!(l.notes.iter().any(|n| n.contains("Megatron turns it off")));
    // The fp8 variant: Transformer Engine's linear layers in fp8, on an fp8 chip.
    let f = Launch::from_megatron(&format!("{LLAMA3_8B}{LLAMA3_8B_FP8}")).unwrap();
    let hand8 = hand.replace("precision = \"bf16\"", "precision = \"fp8\"");
    assert_same(&f, None, "dgx-h100:8", &m, &hand8);
    assert!(
        f.notes.iter().any(|n| n.contains("--fp8-format hybrid")),
        "{:?}",
        f.notes
    );
}

#[test]
fn megatron_llama3_70b_block_recompute_and_rope_with_long_position_table() {
    let l = Launch::from_megatron(LLAMA3_70B).unwrap();
    let m = model_toml(
        "layers = 80\nhidden = 8192\nheads = 64\nkv_heads = 8\nffn = 28672\nffn_kind = \"swiglu\"\n\
         vocab = 128256\nseq_len = 2048\ntied_embeddings = false\nposition = \"rotary\"\n\
         norm = \"rmsnorm\"\nbias = false\nglobal_batch = 8\n",
    );
    let hand = "tp = 8\nmicro_batch_size = 1\nglobal_batch = 8\nprecision = \"bf16\"\n\
                opt_shard = \"zero1\"\nremat = \"full\"\nseq_parallel = true\nattention = \"flash\"\n\
                grad_accumulation = \"separate\"\n";
    // The script passes --no-gradient-accumulation-fusion: a separate add pass per micro-batch.
    assert_same(&l, None, "dgx-h100:64", &m, hand);
    assert!(l.notes.iter().any(|n| n.contains("--use-flash-attn")));
}

#[test]
fn megatron_deepspeed_llama2_with_its_config() {
    let l = Launch::from_megatron(LLAMA2_DS)
        .unwrap()
        .combine(Launch::from_deepspeed(LLAMA2_DS_CONFIG, "deepspeed.json").unwrap())
        .unwrap();
    let m = model_toml(
        "layers = 24\nhidden = 2048\nheads = 16\nkv_heads = 4\nffn = 5504\nffn_kind = \"swiglu\"\n\
         vocab = 32000\nseq_len = 2048\ntied_embeddings = false\nposition = \"rotary\"\n\
         norm = \"rmsnorm\"\nbias = false\nglobal_batch = 32\n",
    );
    let hand = "tp = 2\npp = 2\nmicro_batch_size = 4\nglobal_batch = 32\nprecision = \"bf16\"\n\
                p2p_blocking = true\n";
    assert_same(&l, None, "dgx-a100-80g:8", &m, hand);
    assert!(l.notes.iter().any(|n| n.contains("torchrun")));
    assert!(l.notes.iter().any(|n| n.contains("--deepspeed_config")));
    assert!(l.ignored.iter().any(|a| a == "steps_per_print=1"));
}

#[test]
fn megatron_deepspeed_gpt_1_3b() {
    let l = Launch::from_megatron(GPT_1_3B_DS).unwrap();
    let m = model_toml(
        "layers = 24\nhidden = 2048\nheads = 16\nffn = 8192\nvocab = 50257\nseq_len = 2048\n\
         dropout = 0.1\nglobal_batch = 512\n",
    );
    let hand = "tp = 2\npp = 2\nmicro_batch_size = 2\nglobal_batch = 512\nprecision = \"fp16\"\n\
                opt_shard = \"zero1\"\nremat = \"full\"\np2p_blocking = true\n";
    assert_same(&l, None, "dgx-a100-80g:64", &m, hand);
}

#[test]
fn deepspeed_configs_combine_with_a_model_preset() {
    // A DeepSpeed config has no sequence length, and pangu-alpha-350m has no reference run:
    // the user passes --seq-len (here, 1024) beside it.
    let seq = |l: Launch| Launch {
        spec: l.spec.overlay(&StrategySpec {
            seq_len: Some(1024),
            ..Default::default()
        }),
        ..l
    };
    let z2 = seq(Launch::from_deepspeed(DS_ZERO2, "ds_zero2_config.json").unwrap());
    let hand = "global_batch = 16\nmicro_batches = 1\nopt_shard = \"zero2\"\nprecision = \"fp16\"\nseq_len = 1024\n";
    assert_same(&z2, Some("pangu-alpha-350m"), "dgx-a100-80g:16", "", hand);
    assert!(z2.ignored.iter().any(|a| a.starts_with("optimizer=")));
    assert!(z2.notes.iter().any(|n| n.contains("partition_activations")));

    // No train_batch_size: DeepSpeed derives it from dp; the explicit flag gives it.
    let z3 = seq(Launch::from_deepspeed(DS_ZERO3, "ds_zero_stage_3_config.json").unwrap());
    let flags = StrategySpec {
        global_batch: Some(128),
        ..Default::default()
    };
    let z3 = Launch {
        spec: z3.spec.overlay(&flags),
        ..z3
    };
    let hand = "global_batch = 128\nmicro_batch_size = 8\nmicro_batches = 1\nopt_shard = \"zero3\"\nprecision = \"fp16\"\nseq_len = 1024\n";
    assert_same(&z3, Some("pangu-alpha-350m"), "dgx-a100-80g:16", "", hand);

    let z1 =
        seq(Launch::from_deepspeed(DS_ZERO1, "ds_config_gbs256_mbs8_log1_zero1.json").unwrap());
    let hand = "global_batch = 256\nmicro_batch_size = 8\nopt_shard = \"zero1\"\nprecision = \"fp16\"\nseq_len = 1024\n";
    assert_same(&z1, Some("pangu-alpha-350m"), "dgx-a100-80g:32", "", hand);
}

#[test]
fn explicit_flags_override_the_launch_config() {
    let ds = Launch::from_deepspeed(DS_ZERO1, "ds.json").unwrap();
    let file =
        StrategySpec::from_toml("opt_shard = \"zero3\"\nremat = \"full\"\n", "s.toml").unwrap();
    let flags = StrategySpec {
        precision: Some(pangu_strategies::Precision::Bf16),
        ..Default::default()
    };
    // Strategy file < launch config < flags.
    let spec = file.overlay(&ds.spec).overlay(&flags);
    assert_eq!(spec.opt_shard, Some(pangu_strategies::OptShard::Zero1));
    assert_eq!(spec.remat, Some(pangu_strategies::Remat::Full));
    assert_eq!(spec.precision, Some(pangu_strategies::Precision::Bf16));
}
