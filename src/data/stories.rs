//! Story separators: a dataset put together by hand often holds many stories in one text
//! file, each ended by `<|endoftext|>`, GPT-2's end-of-text token written out. KoboldAI's
//! tuner replaced that text with the model's EOS token, whatever the model; so does
//! softtune: [`split`] cuts a text file's text at its separators and each story is then
//! followed by the model's EOS token, as each file is. Without this, a model whose EOS is
//! another token (Llama's `</s>`, OPT's) would learn to write the characters
//! `<|endoftext|>`.
//!
//! Only text files are cut: in a book or a document the characters are the author's text.

/// The separator, as KoboldAI's tuner and GPT-2 datasets write it.
pub const SEPARATOR: &str = "<|endoftext|>";

/// Bumped when [`split`] changes; enters the token cache's key of text files that
/// [`mentions`] the separator.
pub const VERSION: &str = "stories-1";

/// Whether a text file's `bytes` hold the separator, in UTF-8 or in UTF-16 (either byte
/// order): a superset of the texts [`split`] cuts, cheap enough to check every dataset file
/// for the cache key.
pub fn mentions(bytes: &[u8]) -> bool {
    let utf8 = SEPARATOR.as_bytes();
    let le: Vec<u8> = utf8.iter().flat_map(|&b| [b, 0]).collect();
    let be: Vec<u8> = utf8.iter().flat_map(|&b| [0, b]).collect();
    [utf8, &le[..], &be[..]]
        .iter()
        .any(|needle| bytes.windows(needle.len()).any(|w| w == *needle))
}

/// The stories of `text`, cut at its separators. The separator goes; so do the blanks
/// and line breaks after it, through the end of its line and any blank lines, so the story
/// after it starts at its first line, as a file does. A story that is only whitespace (before a first
/// separator, between two, after the last) is left out, so no EOS token follows another.
/// A text without the separator is one story, as it is.
pub fn split(text: &str) -> Vec<&str> {
    if !text.contains(SEPARATOR) {
        return vec![text];
    }
    let mut stories = Vec::new();
    for (i, piece) in text.split(SEPARATOR).enumerate() {
        let piece = if i == 0 {
            piece
        } else {
            after_separator(piece)
        };
        if !piece.trim().is_empty() {
            stories.push(piece);
        }
    }
    stories
}

/// `piece` without the blanks and line breaks that end the separator's line and any blank
/// lines after it: the indentation of the story's first line stays when the story starts
/// on a line of its own; after the separator on the same line, the story starts at its
/// first word.
fn after_separator(piece: &str) -> &str {
    let blank = piece.len() - piece.trim_start().len();
    match piece[..blank].rfind('\n') {
        Some(i) => &piece[i + 1..],
        None => &piece[blank..],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stories_are_cut_at_their_separators() {
        assert_eq!(
            split("One.\n<|endoftext|>\nTwo.\n\n<|endoftext|>  \n\n    Three.\n"),
            ["One.\n", "Two.\n\n", "    Three.\n"]
        );
        // Inline, as `text.replace` in KoboldAI's tuner would have read it.
        assert_eq!(split("One.<|endoftext|>Two."), ["One.", "Two."]);
        assert_eq!(split("One. <|endoftext|> Two."), ["One. ", "Two."]);
        // Separators at the start, the end, and twice in a row make no empty story.
        assert_eq!(
            split("<|endoftext|>\nOne.\n<|endoftext|>\n<|endoftext|>\nTwo.\n<|endoftext|>\n"),
            ["One.\n", "Two.\n"]
        );
        assert!(split("<|endoftext|>\n \n").is_empty());
    }

    #[test]
    fn other_texts_are_one_story() {
        for text in ["", "\n", "A story.\n", "<|endoftext|", "<|end of text|>"] {
            assert_eq!(split(text), [text]);
        }
    }

    #[test]
    fn the_separator_is_found_in_utf8_and_utf16() {
        let text = "One.\n<|endoftext|>\nTwo.";
        assert!(mentions(text.as_bytes()));
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert!(mentions(&le) && mentions(&be));
        assert!(!mentions(b"One.\n<|endoftext|\nTwo."));
        assert!(!mentions(b""));
    }
}
