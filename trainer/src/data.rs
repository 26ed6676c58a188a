//! The corpus, tokenised and packed into training samples.
//!
//! Documents are the blocks of the corpus separated by blank lines (one poem, ci or chapter
//! each in `data/zh_poetry_hans.txt`). The held-out split is the last 5 % of the corpus's
//! characters, rounded to the next document boundary. Each split is tokenised into one stream
//! with `<eod>` after every document and cut into non-overlapping samples of `seq + 1` tokens
//! (inputs and the shifted targets: [MZ]'s 1025-token samples for seq 1024). Training visits
//! the samples in a seeded permutation per epoch, so the data position of a run is one integer.

use std::path::Path;

use crate::model::special::EOD;
use crate::rng::Counter;
use crate::tokenizer::Tokenizer;
use crate::TrainError;

/// The share of the corpus held out for validation.
pub const HELD_OUT: f64 = 0.05;

/// Reads a UTF-8 corpus; the error says where the first invalid byte is.
pub fn read_corpus(path: &Path) -> Result<String, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        TrainError::invalid(
            path,
            format!(
                "not UTF-8 text: invalid byte at offset {} (the corpus must be UTF-8)",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    if text.trim().is_empty() {
        return Err(TrainError::invalid(path, "the corpus is empty"));
    }
    Ok(text)
}

/// Splits text into documents at blank lines.
pub fn documents(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .map(|d| d.trim_matches('\n'))
        .filter(|d| !d.trim().is_empty())
        .collect()
}

/// (training, held-out) text: the held-out part starts at the first document boundary after
/// `1 - HELD_OUT` of the characters.
pub fn split(text: &str) -> (&str, &str) {
    let chars = text.chars().count();
    let cut_char = ((1.0 - HELD_OUT) * chars as f64) as usize;
    let cut_byte = text
        .char_indices()
        .nth(cut_char)
        .map_or(text.len(), |(b, _)| b);
    match text[cut_byte..].find("\n\n") {
        Some(i) => text.split_at(cut_byte + i + 2),
        None => (text, ""),
    }
}

/// A tokenised split, packed into samples of `seq + 1` tokens.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The token stream (documents each followed by EOD).
    pub tokens: Vec<u32>,
    /// Sequence length of the samples (each sample holds seq + 1 tokens).
    pub seq: usize,
    /// Characters of the text the stream encodes.
    pub chars: usize,
}

impl Packed {
    /// Tokenises `text` document by document.
    pub fn new(tok: &Tokenizer, text: &str, seq: usize) -> Packed {
        let mut tokens = Vec::new();
        let mut chars = 0;
        for d in documents(text) {
            tokens.extend(tok.encode(d));
            tokens.push(EOD);
            chars += d.chars().count() + 1;
        }
        Packed { tokens, seq, chars }
    }

    /// Number of whole samples.
    pub fn samples(&self) -> usize {
        self.tokens.len() / (self.seq + 1)
    }

    /// Sample `i`: `seq + 1` tokens.
    pub fn sample(&self, i: usize) -> &[u32] {
        &self.tokens[i * (self.seq + 1)..(i + 1) * (self.seq + 1)]
    }
}

/// The order in which training visits samples: a seeded permutation per epoch.
#[derive(Debug, Clone)]
pub struct Order {
    seed: u64,
    n: usize,
    epoch: u64,
    perm: Vec<usize>,
}

impl Order {
    /// The order of `n` samples for `seed`.
    pub fn new(seed: u64, n: usize) -> Order {
        let mut o = Order {
            seed,
            n,
            epoch: u64::MAX,
            perm: Vec::new(),
        };
        o.set_epoch(0);
        o
    }

    fn set_epoch(&mut self, epoch: u64) {
        if epoch == self.epoch {
            return;
        }
        self.epoch = epoch;
        self.perm = (0..self.n).collect();
        let mut rng = Counter::new(crate::rng::hash(self.seed, 0xDA7A, epoch));
        for i in (1..self.n).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            self.perm.swap(i, j);
        }
    }

    /// The sample visited `k`-th in the run (0-based, across epochs).
    pub fn at(&mut self, k: u64) -> usize {
        let n = self.n.max(1) as u64;
        self.set_epoch(k / n);
        self.perm[(k % n) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_holds_out_the_tail_at_a_document_boundary() {
        let docs: Vec<String> = (0..100)
            .map(|i| format!("《题{i}》\n春风又绿江南岸"))
            .collect();
        let text = docs.join("\n\n") + "\n";
        let (train, held) = split(&text);
        assert_eq!(format!("{train}{held}"), text);
        assert!(train.ends_with("\n\n"));
        let share = held.chars().count() as f64 / text.chars().count() as f64;
        assert!((0.03..0.06).contains(&share), "{share}");
        assert_eq!(documents(&text).len(), 100);
    }

    #[test]
    fn order_is_a_permutation_per_epoch_and_reproducible() {
        let mut a = Order::new(3, 10);
        let first: Vec<usize> = (0..10).map(|k| a.at(k)).collect();
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let second: Vec<usize> = (10..20).map(|k| a.at(k)).collect();
        assert_ne!(first, second);
        let mut b = Order::new(3, 10);
        assert_eq!(b.at(13), second[3]);
        assert_eq!(b.at(2), first[2]);
    }
}
