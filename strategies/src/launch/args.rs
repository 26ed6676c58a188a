//! Megatron-style argument lists: words grouped into `--name value...` arguments, read once
//! each, so that whatever is left over can be listed as ignored.

use super::error::LaunchError;
use super::tokenize::{words, Word};

/// Arguments that take no value (flags) among those this tool reads.
const FLAGS: &[&str] = &[
    "swiglu",
    "gradient-accumulation-fusion",
    "no-gradient-accumulation-fusion",
    "group-query-attention",
    "untie-embeddings-and-output-weights",
    "disable-bias-linear",
    "sequence-parallel",
    "use-distributed-optimizer",
    "fp16",
    "bf16",
    "use-flash-attn",
    "use-flash-attn-v1",
    "use-flash-attn-v2",
    "use-flash-attn-triton",
    "tp-comm-overlap",
    "overlap-p2p-communication",
    "checkpoint-activations",
    "recompute-activations",
    "use-rotary-position-embeddings",
    "no-position-embedding",
    "deepspeed",
    "deepspeed-activation-checkpointing",
    "no-pipeline-parallel",
    "overlap-grad-reduce",
    "overlap-param-gather",
    "use-mcore-models",
    "mock-data",
];

/// Arguments that take exactly one value among those this tool reads.
const VALUED: &[&str] = &[
    "num-layers",
    "hidden-size",
    "ffn-hidden-size",
    "num-attention-heads",
    "num-query-groups",
    "num-key-value-heads",
    "kv-channels",
    "seq-length",
    "max-position-embeddings",
    "normalization",
    "position-embedding-type",
    "vocab-size",
    "tokenizer-type",
    "tokenizer-model",
    "make-vocab-size-divisible-by",
    "tensor-model-parallel-size",
    "pipeline-model-parallel-size",
    "num-layers-per-virtual-pipeline-stage",
    "virtual-pipeline-model-parallel-size",
    "context-parallel-size",
    "micro-batch-size",
    "global-batch-size",
    "recompute-granularity",
    "recompute-method",
    "recompute-num-layers",
    "activations-checkpoint-method",
    "activations-checkpoint-num-layers",
    "checkpoint-num-layers",
    "fp8-format",
    "zero-stage",
    "hidden-dropout",
    "attention-dropout",
    "attention-backend",
    "num-experts",
    "expert-model-parallel-size",
    "expert-tensor-parallel-size",
    "deepspeed-config",
    "vocab-file",
    "merge-file",
];

/// One argument as written.
#[derive(Debug, Clone)]
pub(super) struct Arg {
    /// The name as written, `--num-layers`.
    pub(super) written: String,
    /// The name without dashes, underscores as dashes: `num-layers`.
    pub(super) key: String,
    /// Its values.
    pub(super) values: Vec<Word>,
}

impl Arg {
    /// The argument as written, values included.
    pub(super) fn shown(&self) -> String {
        std::iter::once(self.written.clone())
            .chain(self.values.iter().map(|v| v.text.clone()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The arguments of a line, each marked once read.
pub(super) struct Args {
    args: Vec<Arg>,
    read: Vec<bool>,
    /// Words before the first argument (the launcher and script), skipped.
    pub(super) launcher: Vec<String>,
}

fn key_of(name: &str) -> String {
    name.trim_start_matches('-').replace('_', "-")
}

impl Args {
    /// Splits `line` into arguments.
    pub(super) fn parse(line: &str) -> Result<Args, LaunchError> {
        let mut ws: Vec<Word> = Vec::new();
        for w in words(line)? {
            // `"--vocab-size 128256"` quoted as one array element splits like `${ARR[@]}`.
            if w.text.starts_with("--") && w.text.contains(char::is_whitespace) {
                ws.extend(w.text.split_whitespace().map(|t| Word {
                    text: t.to_string(),
                    expansion: w.expansion.clone(),
                }));
            } else {
                ws.push(w);
            }
        }
        // A pasted command line: everything up to the training script is the launcher.
        let script = ws.iter().position(|w| w.text.ends_with(".py"));
        let first = ws.iter().position(|w| w.text.starts_with("--"));
        let start = match (script, first) {
            (Some(s), _) => s + 1,
            (None, Some(f)) => f,
            (None, None) => ws.len(),
        };
        let launcher: Vec<String> = ws[..start].iter().map(|w| w.text.clone()).collect();
        let mut args: Vec<Arg> = Vec::new();
        let mut i = start;
        while i < ws.len() {
            let w = &ws[i];
            if !w.text.starts_with("--") {
                return Err(match &w.expansion {
                    Some(v) => LaunchError::ShellVariable {
                        argument: args
                            .last()
                            .map(|a| a.written.clone())
                            .unwrap_or_else(|| w.text.clone()),
                        variable: v.clone(),
                    },
                    None => LaunchError::BadValue {
                        argument: args.last().map(|a| a.written.clone()).unwrap_or_default(),
                        value: w.text.clone(),
                        expected: "a word outside any argument; arguments start with --".into(),
                    },
                });
            }
            let (name, inline) = match w.text.split_once('=') {
                Some((n, v)) => (
                    n.to_string(),
                    Some(Word {
                        text: v.to_string(),
                        expansion: w.expansion.clone(),
                    }),
                ),
                None => (w.text.clone(), None),
            };
            let key = key_of(&name);
            let mut values: Vec<Word> = inline.into_iter().collect();
            i += 1;
            let is_value = |w: &Word| !w.text.starts_with("--");
            if values.is_empty() && !FLAGS.contains(&key.as_str()) {
                if VALUED.contains(&key.as_str()) {
                    match ws.get(i) {
                        Some(v) if is_value(v) => {
                            values.push(v.clone());
                            i += 1;
                        }
                        _ => return Err(LaunchError::MissingValue(name)),
                    }
                } else {
                    // Unknown: every value up to the next argument (`--split 949,50,1`,
                    // `--rampup-batch-size 16 16 5859375`, `--data-path 1 PATH`).
                    while let Some(v) = ws.get(i).filter(|v| is_value(v)) {
                        values.push(v.clone());
                        i += 1;
                    }
                }
            }
            args.push(Arg {
                written: name,
                key,
                values,
            });
        }
        let read = vec![false; args.len()];
        Ok(Args {
            args,
            read,
            launcher,
        })
    }

    /// The last occurrence of `key` (argparse keeps the last), marked read with every
    /// earlier one.
    pub(super) fn take(&mut self, key: &str) -> Option<Arg> {
        let mut found = None;
        for (i, a) in self.args.iter().enumerate() {
            if a.key == key {
                self.read[i] = true;
                found = Some(a.clone());
            }
        }
        found
    }

    /// Whether a flag is present.
    pub(super) fn flag(&mut self, key: &str) -> bool {
        self.take(key).is_some()
    }

    /// The text value of `key`; a shell expansion in it is an error naming the argument.
    pub(super) fn text(&mut self, key: &str) -> Result<Option<(String, String)>, LaunchError> {
        let Some(a) = self.take(key) else {
            return Ok(None);
        };
        let Some(v) = a.values.first() else {
            return Err(LaunchError::MissingValue(a.written));
        };
        if let Some(var) = &v.expansion {
            return Err(LaunchError::ShellVariable {
                argument: a.written,
                variable: var.clone(),
            });
        }
        Ok(Some((a.written, v.text.clone())))
    }

    /// A whole-number value of `key`.
    pub(super) fn num(&mut self, key: &str) -> Result<Option<u32>, LaunchError> {
        self.text(key)?
            .map(|(arg, v)| {
                v.parse::<u32>().map_err(|_| LaunchError::BadValue {
                    argument: arg,
                    value: v,
                    expected: "a whole number (e.g. 8)".into(),
                })
            })
            .transpose()
    }

    /// A real value of `key`.
    pub(super) fn real(&mut self, key: &str) -> Result<Option<f64>, LaunchError> {
        self.text(key)?
            .map(|(arg, v)| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or(LaunchError::BadValue {
                        argument: arg,
                        value: v,
                        expected: "a number (e.g. 0.1)".into(),
                    })
            })
            .transpose()
    }

    /// Arguments whose key satisfies `pred`, without marking them.
    pub(super) fn matching(&self, pred: impl Fn(&str) -> bool) -> Vec<Arg> {
        self.args.iter().filter(|a| pred(&a.key)).cloned().collect()
    }

    /// Marks every argument whose key satisfies `pred` as read.
    pub(super) fn mark(&mut self, pred: impl Fn(&str) -> bool) {
        for (i, a) in self.args.iter().enumerate() {
            if pred(&a.key) {
                self.read[i] = true;
            }
        }
    }

    /// The arguments never read, as written.
    pub(super) fn unread(&self) -> Vec<String> {
        self.args
            .iter()
            .zip(&self.read)
            .filter(|(_, r)| !**r)
            .map(|(a, _)| a.shown())
            .collect()
    }
}
