//! Text generation with a KV cache: one token at a time, each layer's keys and values of
//! earlier positions kept, sampling with temperature, top-k and top-p (nucleus).

use crate::kernels as k;
use crate::model::{bias, norm_fwd, special, Dims, FfnBufs, Model};
use crate::rng::Counter;

/// Sampling settings.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// Softmax temperature (0: greedy).
    pub temperature: f64,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: all).
    pub top_p: f64,
    /// Seed.
    pub seed: u64,
}

/// Per-layer key/value cache of one sequence.
#[derive(Debug)]
pub struct KvCache {
    /// Keys `[layers][S·kv_dim]`.
    k: Vec<Vec<f32>>,
    /// Values `[layers][S·kv_dim]`.
    v: Vec<Vec<f32>>,
    /// Positions filled.
    pub len: usize,
    /// Buffers of one decoding step, allocated once with the cache.
    work: Scratch,
}

impl KvCache {
    /// An empty cache for `dims` (room for the full sequence length).
    pub fn new(dims: &Dims) -> KvCache {
        let (d, f, kw) = (dims.d, dims.f, dims.kvw());
        KvCache {
            k: vec![vec![0.0; dims.s * kw]; dims.layers],
            v: vec![vec![0.0; dims.s * kw]; dims.layers],
            len: 0,
            work: Scratch {
                x: vec![0.0; d],
                ln: vec![0.0; d],
                qin: vec![0.0; d],
                qkv: vec![0.0; dims.qkv_w()],
                att: vec![0.0; d],
                tmp: vec![0.0; d],
                up: vec![0.0; dims.up_w()],
                act: vec![0.0; f],
                scores: vec![0.0; dims.s],
                mean: [0.0],
                rstd: [0.0],
            },
        }
    }
}

/// Scratch vectors of one decoding step.
#[derive(Debug)]
struct Scratch {
    x: Vec<f32>,
    ln: Vec<f32>,
    qin: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    scores: Vec<f32>,
    mean: [f32; 1],
    rstd: [f32; 1],
}

/// Runs token `tok` at the next position through the model, appending to the cache; returns
/// the logits of the next token. One function (~160 lines) on purpose: it is the forward of
/// one token through every block, in the order of the training forward it mirrors (see
/// `model::layer`), with each block's scratch buffers borrowed once.
pub fn step<'a>(
    model: &Model,
    p: &[f32],
    cache: &mut KvCache,
    tok: u32,
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    let dims = model.dims();
    let Dims {
        d, h, f, v, arch, ..
    } = dims;
    let (hd, qw, kw) = (d / h, dims.qkv_w(), dims.kvw());
    let grp = h / dims.kvl;
    let lay = &model.layout;
    let pos = cache.len;
    let KvCache {
        k: kc,
        v: vc,
        work: s,
        ..
    } = cache;
    scratch.resize(v, 0.0);
    if lay.wpe.is_empty() {
        k::embed_vocab_part(&mut s.x, &[tok], &p[lay.wte.clone()], 0, d);
    } else {
        let (wte, wpe) = (&p[lay.wte.clone()], &p[lay.wpe.clone()]);
        k::embed_fwd(&mut s.x, &[tok], &[pos as u32], wte, wpe, d);
    }
    let nl = lay.layers.len();
    for (l, lp) in lay.layers.iter().enumerate() {
        let query = model.dims().query && l + 1 == nl;
        norm_fwd(
            arch,
            &mut s.ln,
            &mut s.mean,
            &mut s.rstd,
            &s.x,
            &p[lp.ln1_g.clone()],
            &p[lp.ln1_b.clone()],
            d,
        );
        let w = &p[lp.w_qkv.clone()];
        let b = bias(p, &lp.b_qkv);
        if query {
            s.qin
                .copy_from_slice(&p[lay.wqe.clone()][pos * d..(pos + 1) * d]);
            let bq = b.map(|b| &b[..d]);
            k::linear_fwd(&mut s.qkv, qw, &s.qin, d, w, qw, bq, 1, d, d);
            let bkv = b.map(|b| &b[d..]);
            k::linear_fwd(
                &mut s.qkv[d..],
                qw,
                &s.ln,
                d,
                &w[d..],
                qw,
                bkv,
                1,
                d,
                qw - d,
            );
        } else {
            k::linear_fwd(&mut s.qkv, qw, &s.ln, d, w, qw, b, 1, d, qw);
        }
        if let Some(theta) = arch.rope {
            k::rope(
                &mut s.qkv,
                qw,
                h + dims.kvl,
                hd,
                &[pos as u32],
                theta,
                false,
            );
        }
        kc[l][pos * kw..(pos + 1) * kw].copy_from_slice(&s.qkv[d..d + kw]);
        vc[l][pos * kw..(pos + 1) * kw].copy_from_slice(&s.qkv[d + kw..]);
        let scale = 1.0 / (hd as f32).sqrt();
        for hh in 0..h {
            let q = &s.qkv[hh * hd..(hh + 1) * hd];
            // Grouped-query attention: query head hh reads key/value head hh / grp.
            let kv0 = hh / grp * hd;
            let mut mx = f32::NEG_INFINITY;
            for j in 0..=pos {
                let kj = &kc[l][j * kw + kv0..][..hd];
                let dot: f32 = q.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                s.scores[j] = dot;
                mx = mx.max(dot);
            }
            let mut sum = 0.0;
            for sc in &mut s.scores[..=pos] {
                *sc = (*sc - mx).exp();
                sum += *sc;
            }
            let o = &mut s.att[hh * hd..(hh + 1) * hd];
            o.fill(0.0);
            for j in 0..=pos {
                let w = s.scores[j] / sum;
                let vj = &vc[l][j * kw + kv0..][..hd];
                for (o, &vv) in o.iter_mut().zip(vj) {
                    *o += w * vv;
                }
            }
        }
        k::linear_fwd(
            &mut s.tmp,
            d,
            &s.att,
            d,
            &p[lp.w_o.clone()],
            d,
            bias(p, &lp.b_o),
            1,
            d,
            d,
        );
        k::add_into(&mut s.x, &s.tmp);
        crate::model::ffn_fwd(
            arch,
            p,
            lp,
            &s.x,
            FfnBufs {
                ln: &mut s.ln,
                mean: &mut s.mean,
                rstd: &mut s.rstd,
                up: &mut s.up,
                act: &mut s.act,
            },
            &mut s.tmp,
            1,
            d,
            f,
            true,
        );
        k::add_into(&mut s.x, &s.tmp);
    }
    norm_fwd(
        arch,
        &mut s.ln,
        &mut s.mean,
        &mut s.rstd,
        &s.x,
        &p[lay.lnf_g.clone()],
        &p[lay.lnf_b.clone()],
        d,
    );
    crate::linalg::matmul(
        scratch,
        v,
        crate::linalg::n(&s.ln, d),
        crate::linalg::t(&p[lay.out_w()], d),
        1,
        d,
        v,
        false,
    );
    cache.len += 1;
    scratch
}

/// Picks the next token from `logits` (only the first `vocab` entries are real pieces).
pub fn sample(logits: &[f32], vocab: usize, cfg: &Sampling, rng: &mut Counter) -> u32 {
    let logits = &logits[..vocab.min(logits.len())];
    if cfg.temperature <= 0.0 {
        return logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32);
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if cfg.top_k > 0 {
        idx.truncate(cfg.top_k);
    }
    let mx = f64::from(logits[idx[0]]);
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| ((f64::from(logits[i]) - mx) / cfg.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if cfg.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let t: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= t);
    }
    let u = rng.next_f64();
    let mut acc = 0.0;
    for (&i, &p) in idx.iter().zip(&probs) {
        acc += p;
        if u < acc {
            return i as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

/// Continues `prompt` by up to `max_new` tokens (stopping at EOD/EOT or the sequence length);
/// returns the new tokens.
pub fn generate(
    model: &Model,
    p: &[f32],
    prompt: &[u32],
    max_new: usize,
    vocab: usize,
    cfg: &Sampling,
) -> Vec<u32> {
    let dims = model.dims();
    let mut cache = KvCache::new(&dims);
    let mut logits = Vec::new();
    let mut rng = Counter::new(cfg.seed);
    let prompt: &[u32] = if prompt.is_empty() {
        &[special::EOD]
    } else {
        prompt
    };
    let prompt = &prompt[prompt.len().saturating_sub(dims.s)..];
    for &t in prompt {
        step(model, p, &mut cache, t, &mut logits);
    }
    let mut out = Vec::new();
    while out.len() < max_new && cache.len < dims.s {
        let next = sample(&logits, vocab, cfg, &mut rng);
        if next == special::EOD || next == special::EOT {
            break;
        }
        out.push(next);
        step(model, p, &mut cache, next, &mut logits);
    }
    if out.len() < max_new && cache.len >= dims.s {
        // The cache is full: the last sampled token still counts.
        let next = sample(&logits, vocab, cfg, &mut rng);
        if next != special::EOD && next != special::EOT {
            out.push(next);
        }
    }
    out
}
