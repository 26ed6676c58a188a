//! Tests of the op graph: FLOPs, bytes and activations of each op against hand counts.

use super::*;

fn shape(b: u32, t: u32, sp: bool) -> OpShape {
    OpShape::new(b, t, sp, 2)
}

/// Korthikanti et al. 2022 eq. (1)-(3): activation bytes of one layer at 2-byte activations.
fn korthikanti(m: &ModelConfig, b: u32, t: u32, sp: bool, selective: bool) -> f64 {
    let (s, h, a, b, t) = (
        m.seq_len as f64,
        m.hidden as f64,
        m.heads as f64,
        b as f64,
        t as f64,
    );
    let attn = if selective { 0.0 } else { 5.0 * a * s / h };
    let sbh = s * b * h;
    if sp {
        sbh / t * (34.0 + attn)
    } else {
        sbh * (10.0 + 24.0 / t + attn / t)
    }
}

#[test]
fn saved_activations_match_korthikanti() {
    let m = ModelConfig::preset("gpt3-175b")
        .unwrap()
        .with_seq_len(2048)
        .unwrap();
    let m = ModelConfig { dropout: 0.1, ..m };
    for (b, t, sp) in [
        (1, 1, false),
        (2, 8, false),
        (1, 8, true),
        (4, 4, true),
        (1, 2, false),
    ] {
        let tot = totals(&part_ops(&m, Part::Block, shape(b, t, sp)));
        let want = korthikanti(&m, b, t, sp, false);
        assert!(
            (tot.saved.as_f64() - want).abs() / want < 1e-9,
            "b{b} t{t} sp{sp}: {} vs {want}",
            tot.saved.0
        );
        let sel = (tot.saved.0 - tot.saved_selective.0) as f64;
        let want_sel = korthikanti(&m, b, t, sp, true);
        assert!(
            (sel - want_sel).abs() / want_sel < 1e-9,
            "selective b{b} t{t} sp{sp}"
        );
    }
}

#[test]
fn flash_attention_keeps_no_s_squared_term() {
    // Korthikanti et al. 2022's accounting without the 5·a·s/h term (scores, softmax,
    // dropout mask and output), plus the log-sum-exp: 4 bytes per row per head.
    let m = ModelConfig::preset("gpt3-175b")
        .unwrap()
        .with_seq_len(2048)
        .unwrap();
    let m = ModelConfig { dropout: 0.1, ..m };
    let (s, a) = (m.seq_len as f64, m.heads as f64);
    for (b, t, sp) in [(1, 1, false), (2, 8, false), (1, 8, true), (4, 4, true)] {
        let sh = shape(b, t, sp).with_attention(Attention::Flash);
        let tot = totals(&part_ops(&m, Part::Block, sh));
        let lse = 4.0 * a * s * f64::from(b) / f64::from(t);
        let want = korthikanti(&m, b, t, sp, true) + lse;
        assert!(
            (tot.saved.as_f64() - want).abs() / want < 1e-9,
            "b{b} t{t} sp{sp}: {} vs {want}",
            tot.saved.0
        );
        // Selective recompute has nothing to drop and nothing to re-run.
        assert_eq!(tot.saved_selective, Bytes(0));
        assert_eq!(tot.selective_fwd_flops, Flops(0.0));
        // The materialised layer keeps the 5·a·s/h term on top.
        let mat = totals(&part_ops(&m, Part::Block, shape(b, t, sp)));
        let s2 = 5.0 * a * s * s * f64::from(b) / f64::from(t);
        assert!((mat.saved.as_f64() - (tot.saved.as_f64() - lse + s2)).abs() < 1.0);
    }
}

#[test]
fn flash_attention_is_one_causal_kernel_with_a_two_and_a_half_times_backward() {
    let m = ModelConfig::preset("gpt3-175b")
        .unwrap()
        .with_seq_len(2048)
        .unwrap();
    let m = ModelConfig { dropout: 0.1, ..m };
    let sh = shape(2, 8, false);
    let flash = part_ops(&m, Part::Block, sh.with_attention(Attention::Flash));
    let core: Vec<&Op> = flash.iter().filter(|o| o.attention_core).collect();
    assert_eq!(core.len(), 1);
    let fa = core[0];
    assert_eq!(fa.kind, OpKind::FlashAttention);
    // FlashAttention-2 §4.1: forward 4·s²·head_dim·heads per sequence, halved by the
    // causal mask; backward 2.5× the forward (five matmuls for two).
    let (b, s, hd, heads) = (2.0, 2048.0, 128.0, 96.0 / 8.0);
    let fwd = 4.0 * b * s * s * hd * heads / 2.0;
    assert!((fa.fwd_flops.0 - fwd).abs() / fwd < 1e-12);
    assert!((fa.bwd_flops.0 - 2.5 * fa.fwd_flops.0).abs() < 1.0);
    // No memory-bound softmax or dropout over the scores, no s×s traffic.
    assert!(!flash
        .iter()
        .any(|o| matches!(o.name, "softmax" | "attn_dropout")));
    assert!(fa.fwd_bytes.as_f64() < b * heads * s * s);
    // The materialised core: four ops, all attention core, 2× backward.
    let mat = part_ops(&m, Part::Block, sh);
    let core: Vec<&Op> = mat.iter().filter(|o| o.attention_core).collect();
    assert_eq!(core.len(), 4);
    assert!(core.iter().all(|o| o.selective));
    // Everything else is the same op for op.
    let rest =
        |ops: &[Op]| -> Vec<Op> { ops.iter().filter(|o| !o.attention_core).cloned().collect() };
    assert_eq!(rest(&flash), rest(&mat));
}

#[test]
fn attention_names_parse() {
    for a in Attention::ALL {
        assert_eq!(a.to_string().parse::<Attention>().unwrap(), a);
    }
    assert_eq!(
        " Materialized ".parse::<Attention>().unwrap(),
        Attention::Materialised
    );
    assert!("fused".parse::<Attention>().unwrap_err().contains("flash"));
    assert_eq!(Attention::default(), Attention::Materialised);
}

#[test]
fn layer_params_split_by_tp_and_sum_to_the_model() {
    let m = ModelConfig::preset("pangu-alpha-2.6b")
        .unwrap()
        .with_seq_len(1024)
        .unwrap();
    let p = m.params();
    let count = |t: u32| -> u64 {
        let sh = shape(1, t, false);
        let blocks = totals(&part_ops(&m, Part::Block, sh)).params * u64::from(m.blocks());
        let q = totals(&part_ops(&m, Part::QueryLayer, sh)).params;
        let e = totals(&part_ops(&m, Part::Embedding, sh)).params;
        let h: u64 = part_ops(&m, Part::Head, sh)
            .iter()
            .filter(|o| !o.tied_copy)
            .map(|o| o.params)
            .sum();
        blocks + q + e + h
    };
    assert_eq!(count(1), p.total);
    // With tp 8 the matrices split 8 ways; norms, the row-parallel biases and the position
    // tables stay whole on every device.
    let d = 2560u64;
    let per_layer_replicated = 4 * d + 2 * d; // two LayerNorms + two row-parallel biases
    let per_layer_split = p.per_layer - per_layer_replicated;
    let want8 = m.layers as u64 * (per_layer_split / 8 + per_layer_replicated)
        + 40_000 * d / 8
        + 2 * 1024 * d
        + 2 * d;
    assert_eq!(count(8), want8);
}

#[test]
fn flops_per_layer_match_the_dense_formula() {
    // Forward FLOPs of a GeLU block: 24·b·s·d² + 4·b·s²·d (Narayanan et al. 2021, eq. 3),
    // up to the element-wise ops, which are < 1 % here.
    let m = ModelConfig::preset("pangu-alpha-13b")
        .unwrap()
        .with_seq_len(1024)
        .unwrap();
    let (b, s, d) = (2.0, 1024.0, 5120.0);
    let want = 24.0 * b * s * d * d + 4.0 * b * s * s * d;
    let got = totals(&part_ops(&m, Part::Block, shape(2, 1, false)))
        .fwd_flops
        .0;
    assert!((got - want).abs() / want < 0.01, "{got} vs {want}");
    let got8 = totals(&part_ops(&m, Part::Block, shape(2, 8, false)))
        .fwd_flops
        .0;
    assert!((got8 * 8.0 - got).abs() / got < 0.01);
}

#[test]
fn tp_comm_points_follow_megatron() {
    let m = ModelConfig::preset("pangu-alpha-200b")
        .unwrap()
        .with_seq_len(1024)
        .unwrap();
    let ops = part_ops(&m, Part::Block, shape(1, 8, false));
    let comms: Vec<_> = ops.iter().filter_map(|o| o.comm).collect();
    let fwd = comms
        .iter()
        .filter(|c| c.fwd == Some(CollectiveKind::AllReduce))
        .count();
    let bwd = comms
        .iter()
        .filter(|c| c.bwd == Some(CollectiveKind::AllReduce))
        .count();
    assert_eq!((fwd, bwd), (2, 2));
    assert!(comms.iter().all(|c| c.bytes == Bytes(1024 * 16384 * 2)));
    let sp = part_ops(&m, Part::Block, shape(1, 8, true));
    let ag = sp
        .iter()
        .filter_map(|o| o.comm)
        .filter(|c| c.fwd == Some(CollectiveKind::AllGather))
        .count();
    let rs = sp
        .iter()
        .filter_map(|o| o.comm)
        .filter(|c| c.fwd == Some(CollectiveKind::ReduceScatter))
        .count();
    assert_eq!((ag, rs), (2, 2));
    assert!(part_ops(&m, Part::Block, shape(1, 1, false))
        .iter()
        .all(|o| o.comm.is_none()));
}

#[test]
fn rotary_models_rotate_their_local_queries_and_keys_once_per_layer() {
    // Llama 3 8B at tp 2: 16 query heads and 4 key heads of 128 per rank, 4096 tokens.
    let m = ModelConfig::preset("llama3-8b")
        .unwrap()
        .with_seq_len(4096)
        .unwrap();
    let ops = part_ops(&m, Part::Block, shape(1, 2, true));
    let rope: Vec<&Op> = ops.iter().filter(|o| o.kind == OpKind::Rotary).collect();
    assert_eq!(rope.len(), 1);
    let elems = 4096 * (16 + 4) * 128;
    assert_eq!(rope[0].fwd_bytes, Bytes(2 * elems * 2));
    assert_eq!(rope[0].saved, Bytes(0));
    assert_eq!(rope[0].params, 0);
    // Before the attention core, after the projection that makes q and k.
    let at = |f: &dyn Fn(&Op) -> bool| ops.iter().position(f).unwrap();
    assert!(at(&|o| o.name == "qkv_proj") < at(&|o| o.kind == OpKind::Rotary));
    assert!(at(&|o| o.kind == OpKind::Rotary) < at(&|o| o.name == "attn_out"));
    // A GPT (learned positions) has none.
    let g = ModelConfig::preset("gpt3-1.3b").unwrap();
    assert!(part_ops(&g, Part::Block, shape(1, 1, false))
        .iter()
        .all(|o| o.kind != OpKind::Rotary));
}
