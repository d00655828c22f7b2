//! What a peer sent, made safe to print on a terminal: `connect` and
//! `run --output text` write each received text message through [`escape`]
//! unless `--raw` asks for the bytes.
//!
//! A peer's text may hold control characters: ESC starts ANSI sequences
//! that move the cursor, retitle the window or (OSC 52) write the
//! clipboard, and C1 controls (U+0080–U+009F) do the same on terminals that
//! read them. Printing them raw hands the terminal to the peer.

use std::borrow::Cow;

/// `text` on one line, with every control character but tab shown as an
/// escape: newline as `\n`, carriage return as `\r`, the other C0 controls
/// and DEL as `\xNN` (ESC is `\x1b`), C1 controls as `\u{NN}` (CSI is
/// `\u{9b}`). Everything else, backslash included, is as received: the
/// result is for reading (and JSON stays valid for `jq`), not for
/// reversing; `--raw` gives the exact text.
///
/// Borrows when there is nothing to escape (the common case).
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            c if c <= '\u{1f}' || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if is_control(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// C0 but tab, DEL, and C1: Unicode's `Cc` category, tab left out (it only
/// moves to the next tab stop).
fn is_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_is_kept() {
        assert!(matches!(escape("plain, tab\t, é ☃ \\n"), Cow::Borrowed(_)));
        let cases = [
            ("a\nb\r\n", "a\\nb\\r\\n"),
            ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
            // OSC 52 (clipboard write), ended by BEL.
            ("\x1b]52;c;aGk=\x07", "\\x1b]52;c;aGk=\\x07"),
            ("\0\x01\x1f\x7f", "\\x00\\x01\\x1f\\x7f"),
            ("\u{9b}2J\u{80}\u{9f}", "\\u{9b}2J\\u{80}\\u{9f}"),
            ("tab\tstays", "tab\tstays"),
            ("\u{a0}\u{7e}", "\u{a0}~"),
        ];
        for (text, shown) in cases {
            assert_eq!(escape(text), shown, "{text:?}");
        }
    }

    #[test]
    fn every_control_character_is_escaped() {
        for c in (0..=0x9f_u32)
            .filter_map(char::from_u32)
            .filter(|&c| c != '\t')
        {
            let shown = escape(&c.to_string()).into_owned();
            assert!(
                !shown.contains(char::is_control),
                "{c:?} printed as {shown:?}"
            );
            assert_eq!(
                shown.len() > 1,
                c.is_control(),
                "{c:?} printed as {shown:?}"
            );
        }
    }
}
