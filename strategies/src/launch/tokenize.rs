//! Splits a launch line the way a POSIX shell splits words, without expanding anything:
//! single and double quotes, backslash escapes, backslash-newline continuations, `#` comments
//! at the start of a word. A `$` outside single quotes is recorded, not expanded, so the
//! caller can name the argument that carries it.

use super::error::LaunchError;

/// One shell word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Word {
    /// The word with quotes and escapes removed.
    pub(super) text: String,
    /// The first shell expansion in the word (`$TP`, `${TP}`, `$(cmd)`), if any.
    pub(super) expansion: Option<String>,
}

/// The words of `line`.
pub(super) fn words(line: &str) -> Result<Vec<Word>, LaunchError> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut cur: Option<Word> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = cur.take() {
                    out.push(w);
                }
                i += 1;
            }
            '#' if cur.is_none() => {
                // A comment runs to the end of the line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '\\' => {
                match chars.get(i + 1) {
                    // Line continuation: nothing at all.
                    Some('\n') => {}
                    Some(&n) => word(&mut cur).text.push(n),
                    None => word(&mut cur).text.push('\\'),
                }
                i += 2;
            }
            '\'' => {
                let w = word(&mut cur);
                let end = find(&chars, i + 1, '\'').ok_or_else(|| unterminated('\'', line))?;
                w.text.extend(&chars[i + 1..end]);
                i = end + 1;
            }
            '"' => {
                let w = word(&mut cur);
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(unterminated('"', line)),
                        Some('"') => break,
                        Some('\\') if matches!(chars.get(i + 1), Some('\n')) => i += 2,
                        Some('\\') if matches!(chars.get(i + 1), Some('"' | '\\' | '$' | '`')) => {
                            w.text.push(chars[i + 1]);
                            i += 2;
                        }
                        Some('$') => {
                            let (text, next) = expansion(&chars, i);
                            w.expansion.get_or_insert(text.clone());
                            w.text.push_str(&text);
                            i = next;
                        }
                        Some(&ch) => {
                            w.text.push(ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
            }
            '$' | '`' => {
                let (text, next) = if c == '$' {
                    expansion(&chars, i)
                } else {
                    let end = find(&chars, i + 1, '`').unwrap_or(chars.len() - 1);
                    (chars[i..=end].iter().collect(), end + 1)
                };
                let w = word(&mut cur);
                w.expansion.get_or_insert(text.clone());
                w.text.push_str(&text);
                i = next;
            }
            _ => {
                word(&mut cur).text.push(c);
                i += 1;
            }
        }
    }
    if let Some(w) = cur {
        out.push(w);
    }
    Ok(out)
}

fn word(cur: &mut Option<Word>) -> &mut Word {
    cur.get_or_insert_with(|| Word {
        text: String::new(),
        expansion: None,
    })
}

fn find(chars: &[char], from: usize, c: char) -> Option<usize> {
    (from..chars.len()).find(|&j| chars[j] == c)
}

fn unterminated(quote: char, line: &str) -> LaunchError {
    let shown: String = line.chars().take(60).collect();
    LaunchError::Syntax(format!(
        "unterminated {quote} quote in {shown:?}{}; close the quote",
        if line.chars().count() > 60 { "…" } else { "" }
    ))
}

/// The expansion starting at `chars[at] == '$'` and the index after it.
fn expansion(chars: &[char], at: usize) -> (String, usize) {
    let close = |open: char, close: char| -> usize {
        let mut depth = 0;
        for (j, &ch) in chars.iter().enumerate().skip(at + 1) {
            if ch == open {
                depth += 1;
            } else if ch == close {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
        }
        chars.len()
    };
    let end = match chars.get(at + 1) {
        Some('{') => close('{', '}'),
        Some('(') => close('(', ')'),
        Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
            let mut j = at + 1;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            j
        }
        Some(c) if c.is_ascii_digit() || "@*#?!$-".contains(*c) => at + 2,
        _ => at + 1,
    };
    (chars[at..end].iter().collect(), end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<String> {
        words(line).unwrap().into_iter().map(|w| w.text).collect()
    }

    #[test]
    fn quotes_escapes_continuations_and_comments() {
        assert_eq!(
            texts("--a 1 \\\n  --b='x y' \"--c\" 2 # note\n --d"),
            ["--a", "1", "--b=x y", "--c", "2", "--d"]
        );
        assert_eq!(texts(r#"--s "a\"b" 'c\d'"#), ["--s", "a\"b", "c\\d"]);
        assert!(words("--a 'open").is_err());
    }

    #[test]
    fn expansions_are_recorded_not_expanded() {
        let w = words("--tp $TP --pp \"${PP}\" --x '$LIT' --y $(nproc)").unwrap();
        assert_eq!(w[1].expansion.as_deref(), Some("$TP"));
        assert_eq!(w[3].expansion.as_deref(), Some("${PP}"));
        assert_eq!(w[5].expansion, None);
        assert_eq!(w[5].text, "$LIT");
        assert_eq!(w[7].expansion.as_deref(), Some("$(nproc)"));
    }
}
