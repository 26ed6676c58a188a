//! `pangu tokenizer`: train or inspect the jieba + Unigram tokenizer.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use pangu_trainer::data;
use pangu_trainer::tokenizer::Tokenizer;

use crate::output::{emit, print_json, tool_field};

/// Options of `pangu tokenizer`.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenizerArgs {
    #[command(subcommand)]
    cmd: TokenizerCmd,
}

#[derive(Debug, clap::Subcommand)]
enum TokenizerCmd {
    /// Train a jieba + Unigram vocabulary on a corpus's training split (the held-out 5 % is
    /// left out) and write it.
    Train {
        /// UTF-8 corpus (default: data/zh_poetry_hans.txt).
        #[arg(long)]
        corpus: Option<PathBuf>,
        /// Pieces, the 10 special ones included.
        #[arg(long, default_value_t = 8000)]
        vocab: usize,
        /// Output file.
        #[arg(long, default_value = "tokenizer.json")]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show how a text is split into pieces.
    Encode {
        /// Tokenizer file.
        #[arg(long)]
        tokenizer: PathBuf,
        /// Text.
        text: String,
        /// Print JSON: the ids and their pieces.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn tokenizer(a: &TokenizerArgs) -> Result<()> {
    match &a.cmd {
        TokenizerCmd::Train {
            corpus,
            vocab,
            out,
            json,
        } => {
            let path = corpus
                .clone()
                .unwrap_or_else(crate::train_cmd::default_corpus_path);
            let text = data::read_corpus(&path)?;
            let (train, _) = data::split(&text);
            let t0 = Instant::now();
            let tok = Tokenizer::train(train, *vocab)?;
            tok.save(out)?;
            let ids = tok.encode(train);
            let chars = train.chars().count();
            if *json {
                return print_json(&serde_json::json!({
                    "tool": tool_field(&(&text, vocab)),
                    "corpus": path,
                    "out": out,
                    "pieces": tok.vocab_size(),
                    "hash": format!("{:016x}", tok.hash()),
                    "seconds": t0.elapsed().as_secs_f64(),
                    "training_characters": chars,
                    "training_tokens": ids.len(),
                    "tokens_per_character": ids.len() as f64 / chars.max(1) as f64,
                }));
            }
            emit(&format!(
                "{}: {} pieces (hash {:016x}) in {:.1} s; the training split is {} characters in {} tokens ({:.3} tokens per character)\n",
                out.display(),
                tok.vocab_size(),
                tok.hash(),
                t0.elapsed().as_secs_f64(),
                chars,
                ids.len(),
                ids.len() as f64 / chars.max(1) as f64
            ))
        }
        TokenizerCmd::Encode {
            tokenizer,
            text,
            json,
        } => {
            let tok = Tokenizer::load(tokenizer)?;
            let ids = tok.encode(text);
            if *json {
                let pieces: Vec<String> = ids.iter().map(|&i| tok.decode(&[i])).collect();
                let hash = format!("{:016x}", tok.hash());
                return print_json(&serde_json::json!({
                    "tool": tool_field(&(&hash, text)),
                    "tokenizer_hash": hash,
                    "text": text,
                    "ids": ids,
                    "pieces": pieces,
                }));
            }
            let pieces: Vec<String> = ids
                .iter()
                .map(|&i| format!("{}:{}", i, tok.decode(&[i]).replace('\n', "▃")))
                .collect();
            emit(&format!("{}\n", pieces.join(" ")))
        }
    }
}
