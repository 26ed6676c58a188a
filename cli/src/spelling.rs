//! One name per concept across commands: older spellings of a flag still work, with a warning
//! naming the current one. The table is the single place that lists them.

/// (subcommand path, old flag, current flag).
const RENAMED: &[(&[&str], &str, &str)] = &[
    // Every command that takes a strategy calls the samples per step --global-batch.
    (&["train"], "--batch", "--global-batch"),
    // Every other command takes strategy files with --strategy (repeatable here).
    (&["twin", "check"], "--strategies", "--strategy"),
];

/// The arguments with old spellings replaced, and one warning per replacement.
pub(crate) fn modernise(args: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut warnings = Vec::new();
    // The subcommand path is the leading arguments that are not flags (after the binary).
    let path: Vec<&str> = args
        .iter()
        .skip(1)
        .take_while(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let out = args
        .iter()
        .map(|a| {
            let (flag, value) = match a.split_once('=') {
                Some((f, v)) => (f, Some(v)),
                None => (a.as_str(), None),
            };
            for (cmd, old, new) in RENAMED {
                if flag == *old && path.starts_with(cmd) {
                    warnings.push(format!(
                        "warning: {old} is now {new} (the old spelling still works for now)"
                    ));
                    return match value {
                        Some(v) => format!("{new}={v}"),
                        None => (*new).to_string(),
                    };
                }
            }
            a.clone()
        })
        .collect();
    (out, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn old_flags_are_renamed_only_under_their_command() {
        let (a, w) = modernise(v("pangu train --batch 8 --steps 3"));
        assert_eq!(a, v("pangu train --global-batch 8 --steps 3"));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("--global-batch"), "{w:?}");
        let (a, _) = modernise(v("pangu train --batch=8"));
        assert_eq!(a, v("pangu train --global-batch=8"));
        let (a, w) = modernise(v("pangu twin check --strategies a.toml b.toml"));
        assert_eq!(a, v("pangu twin check --strategy a.toml b.toml"));
        assert_eq!(w.len(), 1);
        // Not a flag of that command: left for clap to judge.
        let (a, w) = modernise(v("pangu simulate --batch 8"));
        assert_eq!(a, v("pangu simulate --batch 8"));
        assert!(w.is_empty());
    }
}
