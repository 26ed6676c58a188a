//! PanGu-α's tokenizer (shared/reference/pangu-alpha.md §1.8): jieba word segmentation
//! (`jieba-rs`, precise mode), spaces and newlines mapped to `▂` and `▃`, then a
//! SentencePiece-style Unigram vocabulary (Hugging Face `tokenizers`, stable 0.x) applied inside
//! each word. The special ids are those of the released vocabulary: 0 `<unk>`, 1 `<s>`,
//! 2 `</s>`, 3 `▃` (newline), 4 `▂` (space), 5 `<sep>`, 6 `<pad>`, 7 `<mask>`, 8 `<eod>`,
//! 9 `<eot>`; ordinary pieces start at 10.
//!
//! One difference from [R]: its SentencePiece model adds a `▁` word-start marker to every
//! jieba word and its decoder deletes them again, so the marker carries no information; here
//! words are handed to the Unigram model as pre-split pieces without it, which leaves the
//! vocabulary for real pieces.
//!
//! Training is made reproducible: word counts are handed to the trainer in sorted order, it
//! runs on one thread, and the resulting pieces are ordered by (score, piece).

use std::collections::BTreeMap;
use std::path::Path;

use jieba_rs::Jieba;
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::{AddedToken, Model};

use crate::TrainError;

/// The special pieces, in id order.
pub const SPECIALS: [&str; 10] = [
    "<unk>", "<s>", "</s>", "▃", "▂", "<sep>", "<pad>", "<mask>", "<eod>", "<eot>",
];
/// Id of `▃` (newline).
pub const NEWLINE: u32 = 3;
/// Id of `▂` (space).
pub const SPACE: u32 = 4;

/// The jieba + Unigram tokenizer.
pub struct Tokenizer {
    jieba: Jieba,
    model: Unigram,
    /// Per id, its text after decoding (specials decode to "" except newline, space and EOD).
    pieces: Vec<String>,
    /// The file's bytes (kept as read, so saving a loaded tokenizer reproduces its file).
    json: Vec<u8>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer({} pieces, hash {:016x})",
            self.pieces.len(),
            self.hash()
        )
    }
}

/// FNV-1a, 64 bit: the content hash that ties checkpoints to their tokenizer (kept here for
/// callers of `tokenizer::fnv1a`; it lives in [`crate::fsio`]).
pub use crate::fsio::fnv1a;

/// The Unigram trainer gives characters that pruning removed the scores `min + k·1e-4`, k
/// counting in the iteration order of a randomly seeded hash set, so which character gets which
/// k varies from run to run. The set of scores does not: hand them out again in character
/// order, which makes training deterministic.
fn canonical_penalties(pieces: &mut [(String, f64)]) {
    let Some(min) = pieces.iter().map(|p| p.1).min_by(f64::total_cmp) else {
        return;
    };
    const STEP: f64 = 1e-4;
    let n = pieces.len() as f64;
    let on_ladder = |s: f64| {
        let k = (s - min) / STEP;
        k >= -1e-6 && k < n && (k - k.round()).abs() < 1e-6
    };
    let idx: Vec<usize> = (0..pieces.len())
        .filter(|&i| on_ladder(pieces[i].1))
        .collect();
    let mut scores: Vec<f64> = idx.iter().map(|&i| pieces[i].1).collect();
    scores.sort_by(|a, b| b.total_cmp(a));
    let mut names: Vec<String> = idx.iter().map(|&i| pieces[i].0.clone()).collect();
    names.sort();
    for ((&i, name), score) in idx.iter().zip(names).zip(scores) {
        pieces[i] = (name, score);
    }
}

fn words<'a>(jieba: &Jieba, line: &'a str) -> Vec<&'a str> {
    jieba.cut(line, false)
}

impl Tokenizer {
    /// Trains a vocabulary of at most `vocab` pieces (specials included) on `text`.
    pub fn train(text: &str, vocab: usize) -> Result<Tokenizer, TrainError> {
        if vocab < SPECIALS.len() + 1 {
            return Err(TrainError::Config(format!(
                "vocabulary size {vocab} is too small: it needs the {} special pieces and at least one more",
                SPECIALS.len()
            )));
        }
        let jieba = Jieba::new();
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for line in text.lines() {
            for w in words(&jieba, line) {
                if w.trim().is_empty() {
                    continue;
                }
                *counts.entry(w.to_string()).or_insert(0) += 1;
            }
        }
        let sentences: Vec<(String, u32)> = counts.into_iter().collect();
        let trainer = UnigramTrainer::builder()
            .vocab_size(vocab as u32)
            .special_tokens(
                SPECIALS
                    .iter()
                    .map(|s| AddedToken::from(*s, true))
                    .collect(),
            )
            .unk_token(Some(SPECIALS[0].to_string()))
            .max_piece_length(8)
            .show_progress(false)
            .build()
            .map_err(|e| TrainError::Config(format!("tokenizer trainer: {e}")))?;
        let mut model = Unigram::default();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(|e| TrainError::Config(format!("thread pool: {e}")))?;
        pool.install(|| trainer.do_train(sentences, &mut model))
            .map_err(|e| TrainError::Config(format!("tokenizer training failed: {e}")))?;
        // Deterministic order: specials first in their fixed ids, then by score and piece.
        let mut rest: Vec<(String, f64)> = model
            .iter()
            .filter(|(p, _)| !SPECIALS.contains(&p.as_str()))
            .cloned()
            .collect();
        canonical_penalties(&mut rest);
        rest.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let vocab_list: Vec<(String, f64)> = SPECIALS
            .iter()
            .map(|s| (s.to_string(), 0.0))
            .chain(rest)
            .collect();
        let model = Unigram::from(vocab_list, Some(0), false)
            .map_err(|e| TrainError::Config(format!("tokenizer: {e}")))?;
        let json = serde_json::to_vec(&model)
            .map_err(|e| TrainError::Config(format!("cannot serialise the tokenizer: {e}")))?;
        Ok(Tokenizer::from_parts(jieba, model, json))
    }

    fn from_parts(jieba: Jieba, model: Unigram, json: Vec<u8>) -> Tokenizer {
        let n = model.get_vocab_size();
        let pieces = (0..n as u32)
            .map(|id| match id {
                NEWLINE => "\n".to_string(),
                SPACE => " ".to_string(),
                crate::model::special::EOD => "\n".to_string(),
                i if (i as usize) < SPECIALS.len() => String::new(),
                i => model.id_to_token(i).unwrap_or_default(),
            })
            .collect();
        Tokenizer {
            jieba,
            json,
            model,
            pieces,
        }
    }

    /// The tokenizer file's bytes (the `tokenizers` JSON format of its Unigram model).
    pub fn to_json(&self) -> Vec<u8> {
        self.json.clone()
    }

    /// Parses bytes written by [`Tokenizer::to_json`]; `path` names the source in errors.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Tokenizer, TrainError> {
        let model: Unigram = serde_json::from_slice(bytes).map_err(|e| {
            TrainError::invalid(
                path,
                format!("not a tokenizer file written by `pangu tokenizer train`: {e}"),
            )
        })?;
        for (i, s) in SPECIALS.iter().enumerate() {
            if model.id_to_token(i as u32).as_deref() != Some(*s) {
                return Err(TrainError::invalid(
                    path,
                    format!("id {i} should be the special piece {s}; this vocabulary is not PanGu-α's layout"),
                ));
            }
        }
        Ok(Tokenizer::from_parts(Jieba::new(), model, bytes.to_vec()))
    }

    /// Writes the tokenizer file.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        crate::fsio::write_atomic(path, &self.to_json())
    }

    /// Reads a tokenizer written by [`Tokenizer::save`].
    pub fn load(path: &Path) -> Result<Tokenizer, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        Tokenizer::from_json(&bytes, path)
    }

    /// Number of pieces.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Content hash of the vocabulary (of its file's bytes).
    pub fn hash(&self) -> u64 {
        fnv1a(&self.json)
    }

    /// Token ids of `text` (no EOD added).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 2);
        for (li, line) in text.split('\n').enumerate() {
            if li > 0 {
                ids.push(NEWLINE);
            }
            for w in words(&self.jieba, line) {
                self.encode_word(w, &mut ids);
            }
        }
        ids
    }

    fn encode_word(&self, w: &str, ids: &mut Vec<u32>) {
        // Spaces inside a segment become ▂ (their own id); the rest goes through Unigram.
        for (i, part) in w.split(' ').enumerate() {
            if i > 0 {
                ids.push(SPACE);
            }
            if part.is_empty() {
                continue;
            }
            match self.model.tokenize(part) {
                Ok(toks) => ids.extend(toks.iter().map(|t| t.id)),
                Err(_) => ids.extend(part.chars().map(|_| 0)),
            }
        }
    }

    /// Text of `ids` (EOD decodes to a newline, other specials to nothing).
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter_map(|&i| self.pieces.get(i as usize))
            .map(String::as_str)
            .collect()
    }

    /// Characters that `id` stands for in the text (for losses per character).
    pub fn chars_of(&self, id: u32) -> usize {
        match id {
            0 => 1, // an unknown piece covers one character
            _ => self
                .pieces
                .get(id as usize)
                .map_or(0, |p| p.chars().count()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "《静夜思》李白\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n\n《春晓》孟浩然\n春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。\n";

    #[test]
    fn round_trips_text_and_keeps_the_special_ids() {
        let tok = Tokenizer::train(TEXT, 200).expect("train");
        for (i, s) in SPECIALS.iter().enumerate() {
            assert_eq!(tok.model.id_to_token(i as u32).as_deref(), Some(*s));
        }
        let line = "床前明月光，疑是地上霜。\n举头 望明月";
        let ids = tok.encode(line);
        assert!(ids.contains(&NEWLINE) && ids.contains(&SPACE));
        assert!(ids.iter().all(|&i| i == NEWLINE || i == SPACE || i >= 10));
        assert_eq!(tok.decode(&ids), line);
        let chars: usize = ids.iter().map(|&i| tok.chars_of(i)).sum();
        assert_eq!(chars, line.chars().count());
        // Unseen characters become <unk>, one per character.
        assert_eq!(tok.encode("鳄"), vec![0]);
    }

    #[test]
    fn training_is_deterministic_and_survives_save_and_load() {
        let a = Tokenizer::train(TEXT, 120).expect("train");
        let b = Tokenizer::train(TEXT, 120).expect("train");
        assert_eq!(a.hash(), b.hash());
        let dir = std::env::temp_dir().join(format!("pangu-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("tok.json");
        a.save(&p).expect("save");
        let c = Tokenizer::load(&p).expect("load");
        assert_eq!(c.hash(), a.hash());
        assert_eq!(c.encode(TEXT), a.encode(TEXT));
        std::fs::write(&p, "{}").expect("write");
        assert!(Tokenizer::load(&p).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
