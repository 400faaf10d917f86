//! Text rules shared by descriptors and values: what gmond can carry.
//!
//! gmond 3.7.2 treats the two kinds of text differently, both badly:
//! * metadata (units, description, groups, extra keys) is written into its
//!   XML without any escaping, so `"`, `<`, `>` and `&` break the document
//!   for every consumer (gmetad included), and a `"` in the units makes the
//!   metric silently never appear: see [`gmond_safe`];
//! * string values are escaped, but every byte ≥ 0x80 comes out as a
//!   malformed character reference (`&#` + raw byte), which makes XML
//!   parsers reject the whole host; and a `"` again stops the metric: see
//!   [`value_safe`].

use std::borrow::Cow;

/// Replaces the characters that would break gmond's XML or its metadata
/// checks: `"` → `'`, `<` → `(`, `>` → `)`, `&` → `+`, control characters → space.
pub fn gmond_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_replacing) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                '"' => '\'',
                '<' => '(',
                '>' => ')',
                '&' => '+',
                c if c.is_control() => ' ',
                c => c,
            })
            .collect(),
    )
}

/// Text for a string *value*: `"` → `'`, control characters → space, and
/// every non-ASCII character → `?` (gmond 3.7.2 cannot write those bytes
/// into its XML correctly). gmond escapes `<`, `>`, `&` in values itself.
pub fn value_safe(text: &str) -> Cow<'_, str> {
    if text
        .chars()
        .all(|c| c.is_ascii() && c != '"' && !c.is_control())
    {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                '"' => '\'',
                c if c.is_control() => ' ',
                c if !c.is_ascii() => '?',
                c => c,
            })
            .collect(),
    )
}

fn needs_replacing(c: char) -> bool {
    matches!(c, '"' | '<' | '>' | '&') || c.is_control()
}

/// The longest prefix of `text` that is at most `max_bytes` long and ends on a
/// character boundary, so a cut never leaves half a UTF-8 sequence.
pub fn truncate_utf8(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The prefix every operator-facing line of gmond's log starts with.
pub const LOG_PREFIX: &str = "[modpython]";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_text_is_borrowed_unchanged() {
        assert!(matches!(
            gmond_safe("bytes/sec"),
            Cow::Borrowed("bytes/sec")
        ));
    }

    #[test]
    fn xml_breaking_characters_are_replaced() {
        assert_eq!(gmond_safe("a \"b\" <c> & d\n"), "a 'b' (c) + d ");
    }

    #[test]
    fn values_become_ascii_without_quotes() {
        assert_eq!(value_safe("a<b>&c"), "a<b>&c");
        assert_eq!(value_safe("h\u{e9}llo \"x\"\t"), "h?llo 'x' ");
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate_utf8("abc", 63), "abc");
        assert_eq!(truncate_utf8("abcdef", 3), "abc");
        // 'é' is two bytes: cutting at 2 would split it.
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("€€", 5), "€");
    }
}
