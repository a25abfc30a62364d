//! The stop-string check of a rollout: takes a row's completion ids after each new token and the
//! stop strings, gives whether the decoded completion now contains one, decoding only the last
//! few tokens rather than the whole completion.
//!
//! The check must answer exactly what `decode(ids).contains(stop)` answers, and decoding a
//! window of the last tokens is not the tail of the full decode in general: a window can start
//! inside a multi-byte character split over byte tokens, and tokenizers treat the first token
//! of a decode specially (SentencePiece strips its leading space, WordPiece keeps its `##`). So
//! the window opens with an anchor token whose own decode is a prefix of the window's decode
//! and does not end in an incomplete character; what follows the anchor is then decoded as in
//! the full text. A stop string that was not in the text before this token must end in the
//! part the token changed, so the check searches the window once the text shared by the window
//! with and without the new token is at least a stop string long; otherwise the window doubles,
//! and a window that reaches the first token is the full decode.

use crate::model::Result;
use crate::tokenizer::TextTokenizer;

/// The stop strings of a rollout and the byte length of the longest.
pub(super) struct StopStrings<'a> {
    strings: &'a [String],
    longest: usize,
}

impl<'a> StopStrings<'a> {
    pub(super) fn new(strings: &'a [String]) -> StopStrings<'a> {
        let longest = strings.iter().map(String::len).max().unwrap_or(0);
        StopStrings { strings, longest }
    }

    fn found_in(&self, text: &str) -> bool {
        self.strings.iter().any(|s| text.contains(s.as_str()))
    }

    /// Whether the decoded `ids` (special tokens skipped) contain a stop string, given that
    /// `ids` without its last token did not.
    pub(super) fn completed_by_last(&self, t: &TextTokenizer, ids: &[u32]) -> Result<bool> {
        // Tokens behind the anchor: text tokens average several bytes, and a window that proves
        // too short doubles.
        let mut behind = self.longest.div_ceil(4) + 2;
        while behind + 1 < ids.len() {
            let start = ids.len() - behind - 1;
            if let Some(hit) = self.window(t, ids, start)? {
                return Ok(hit);
            }
            behind *= 2;
        }
        Ok(self.found_in(&t.decode(ids, true)?))
    }

    /// The check on the window of `ids` from the anchor `ids[start]`, or `None` when the window
    /// cannot answer for the full text.
    fn window(&self, t: &TextTokenizer, ids: &[u32], start: usize) -> Result<Option<bool>> {
        let anchor = t.decode(&ids[start..=start], true)?;
        if anchor.is_empty() || anchor.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(None);
        }
        let before = t.decode(&ids[start..ids.len() - 1], true)?;
        let after = t.decode(&ids[start..], true)?;
        let (Some(before), Some(after)) = (
            before.strip_prefix(anchor.as_str()),
            after.strip_prefix(anchor.as_str()),
        ) else {
            return Ok(None);
        };
        let shared = before
            .bytes()
            .zip(after.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        if shared + 1 < self.longest {
            return Ok(None);
        }
        Ok(Some(self.found_in(after)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// GPT-2's map from bytes to the printable characters byte-level BPE vocabularies use.
    fn byte_chars() -> Vec<char> {
        let mut next = 256u32;
        (0u32..256)
            .map(|b| {
                let printable =
                    (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
                if printable {
                    char::from_u32(b).unwrap()
                } else {
                    next += 1;
                    char::from_u32(next - 1).unwrap()
                }
            })
            .collect()
    }

    /// A byte-level BPE tokenizer (as Qwen2 and SmolLM2 use): the 256 byte tokens, merges that
    /// make some multi-byte characters and words single tokens, and an `<eos>` special token.
    fn byte_level() -> TextTokenizer {
        let bc = byte_chars();
        let mut vocab: Vec<String> = bc.iter().map(char::to_string).collect();
        let enc = |s: &str| -> String { s.bytes().map(|b| bc[b as usize]).collect() };
        let mut merges = Vec::new();
        for word in ["é", "ab", "abc", "€"] {
            let chars: Vec<String> = enc(word).chars().map(String::from).collect();
            let mut left = chars[0].clone();
            for c in &chars[1..] {
                merges.push(format!("{left} {c}"));
                left.push_str(c);
                vocab.push(left.clone());
            }
        }
        vocab.dedup();
        merges.dedup();
        let vocab: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i.into()))
            .collect();
        let eos = vocab.len();
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [{"id": eos, "content": "<eos>", "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": merges}
        });
        TextTokenizer::from_json_str(&json.to_string()).unwrap()
    }

    /// A SentencePiece-style tokenizer (as Llama uses): `▁` for spaces, byte fallback tokens
    /// for what the vocabulary lacks, and a decoder that strips the first leading space.
    fn sentencepiece() -> TextTokenizer {
        let mut vocab: Vec<String> = vec!["<unk>".into(), "<eos>".into()];
        vocab.extend((0..256).map(|b| format!("<0x{b:02X}>")));
        for piece in ["▁", "a", "b", "c", "!", "▁a", "▁ab", "bc", "é", "▁é"] {
            vocab.push(piece.into());
        }
        let vocab: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i.into()))
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [{"id": 1, "content": "<eos>", "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "vocab": vocab, "merges": []}
        });
        TextTokenizer::from_json_str(&json.to_string()).unwrap()
    }

    /// Random token sequences, some ids favoured so that words, multi-byte characters split over
    /// byte tokens and special tokens all occur; at each new token the incremental check must
    /// give what searching the full decode gives, up to the first hit.
    fn agrees_with_full_decode(t: &TextTokenizer, favoured: &[u32], seed: u64) {
        let vocab = t.inner().get_vocab_size(true) as u32;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut hits = 0;
        for _ in 0..150 {
            let ids: Vec<u32> = (0..40)
                .map(|_| {
                    if rng.random_bool(0.7) {
                        favoured[rng.random_range(0..favoured.len())]
                    } else {
                        rng.random_range(0..vocab)
                    }
                })
                .collect();
            // Stop strings taken from the sequence's own text, so that one does occur, and from
            // another's.
            let other: Vec<u32> = (0..40)
                .map(|_| favoured[rng.random_range(0..favoured.len())])
                .collect();
            let stops: Vec<String> = [&ids, &other]
                .iter()
                .filter_map(|seq| {
                    let text: Vec<char> = t.decode(seq, true).unwrap().chars().collect();
                    let len = rng.random_range(1..=5.min(text.len()).max(1));
                    let at = rng.random_range(0..=text.len().checked_sub(len)?);
                    Some(text[at..at + len].iter().collect())
                })
                .collect();
            let s = StopStrings::new(&stops);
            for end in 1..=ids.len() {
                let full = s.found_in(&t.decode(&ids[..end], true).unwrap());
                let fast = s.completed_by_last(t, &ids[..end]).unwrap();
                assert_eq!(fast, full, "ids {:?}, stops {stops:?}", &ids[..end]);
                if full {
                    hits += 1;
                    break;
                }
            }
        }
        assert!(hits > 100, "only {hits} sequences reached a stop string");
    }

    #[test]
    fn the_window_check_agrees_with_the_full_decode() {
        let t = byte_level();
        let id = |s: &str| t.inner().token_to_id(s).unwrap();
        // The bytes of "é" and "€" as separate tokens (a byte's token id is the byte), their
        // merged tokens, words, a space, and the special token.
        let mut favoured: Vec<u32> = "é€".bytes().map(u32::from).collect();
        favoured.extend(["Ã©", "âĤ¬", "ab", "abc", "a", "b", "c", "Ġ", "!"].map(id));
        favoured.push(id("<eos>"));
        agrees_with_full_decode(&t, &favoured, 1);

        let t = sentencepiece();
        let id = |s: &str| t.inner().token_to_id(s).unwrap();
        let favoured: Vec<u32> = [
            "<0xC3>", "<0xA9>", "<0xE2>", "<0x82>", "<0xAC>", "▁", "a", "b", "c", "!", "▁a", "▁ab",
            "bc", "é", "▁é", "<eos>",
        ]
        .map(id)
        .to_vec();
        agrees_with_full_decode(&t, &favoured, 2);

        let t = TextTokenizer::arithmetic().unwrap();
        let favoured: Vec<u32> = (0..t.inner().get_vocab_size(true) as u32).collect();
        agrees_with_full_decode(&t, &favoured, 3);
    }

    #[test]
    fn a_stop_string_split_over_byte_tokens_is_found_at_its_last_byte() {
        let t = byte_level();
        let ids: Vec<u32> = "abab abab€".bytes().map(u32::from).collect();
        let stops = vec!["b€".to_string()];
        let s = StopStrings::new(&stops);
        for end in 1..ids.len() {
            assert!(!s.completed_by_last(&t, &ids[..end]).unwrap(), "at {end}");
        }
        assert!(s.completed_by_last(&t, &ids).unwrap());
    }
}
