//! A tokenizer built from a sentencepiece `tokenizer.model`, for models that ship it and no
//! `tokenizer.json` (Llama-family fine-tunes, older Mistral repositories).
//!
//! The `.model` file is a protobuf `ModelProto` (sentencepiece's `sentencepiece_model.proto`);
//! only the fields below are read. What is built is what transformers (5.x) builds from the
//! same files, in one of two ways:
//!
//! - `tokenizer_class` `LlamaTokenizer` (or `LlamaTokenizerFast`) in `tokenizer_config.json`:
//!   transformers' Llama tokenizer. A BPE over every piece, merges derived from the vocabulary
//!   (each piece's splits into two pieces, ordered by the piece's id), byte fallback, no
//!   normalizer, and a Metaspace pre-tokenizer that prefixes `▁` once (`legacy` false, the
//!   default), before every text between added tokens (`legacy` true) or never
//!   (`add_prefix_space` false). Control pieces are special tokens, user-defined pieces
//!   ordinary added tokens; `<s>`, `</s>`, `<unk>` unless the settings name others.
//! - no `tokenizer_class`: the model's own sentencepiece settings, which encode like
//!   sentencepiece itself. The normalizer spec (its precompiled character map, extra-space
//!   removal, whitespace escaping, the dummy prefix), a BPE whose merges are ranked by piece
//!   score (user-defined pieces kept whole) or a Unigram model, and the proto's own special
//!   pieces.
//!
//! Any other tokenizer class is refused, with the one-line Python conversion to
//! `tokenizer.json`. The settings files and added tokens are read as for GPT-2's slow files
//! ([`super::tokenizer_files`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use prost::Message;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{NormalizerWrapper, Precompiled, Replace, Sequence};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::tokenizer_files::Settings;

/// The sentencepiece model file transformers looks for.
pub const MODEL_FILE: &str = "tokenizer.model";
/// Tokenizer classes built as transformers' Llama tokenizer.
const LLAMA_CLASSES: [&str; 2] = ["LlamaTokenizer", "LlamaTokenizerFast"];

/// sentencepiece's word-boundary mark.
const SPACE: char = '▁';

/// Whether `dir` holds a sentencepiece model.
pub fn present(dir: &Path) -> bool {
    dir.join(MODEL_FILE).is_file()
}

// The fields of sentencepiece_model.proto that shape encoding. proto2 defaults are applied
// where the fields are read.

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<Piece>,
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct Piece {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
    /// NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6.
    #[prost(int32, optional, tag = "3")]
    kind: Option<i32>,
}

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

#[derive(Clone, PartialEq, Message)]
struct TrainerSpec {
    /// UNIGRAM = 1, BPE = 2, WORD = 3, CHAR = 4.
    #[prost(int32, optional, tag = "3")]
    model_type: Option<i32>,
    #[prost(bool, optional, tag = "35")]
    byte_fallback: Option<bool>,
    #[prost(int32, optional, tag = "40")]
    unk_id: Option<i32>,
    #[prost(int32, optional, tag = "41")]
    bos_id: Option<i32>,
    #[prost(int32, optional, tag = "42")]
    eos_id: Option<i32>,
    #[prost(string, optional, tag = "45")]
    unk_piece: Option<String>,
    #[prost(string, optional, tag = "46")]
    bos_piece: Option<String>,
    #[prost(string, optional, tag = "47")]
    eos_piece: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct NormalizerSpec {
    #[prost(bytes = "vec", optional, tag = "2")]
    precompiled_charsmap: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3")]
    add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4")]
    remove_extra_whitespaces: Option<bool>,
    #[prost(bool, optional, tag = "5")]
    escape_whitespaces: Option<bool>,
}

/// One piece with the proto2 defaults applied.
struct Entry {
    piece: String,
    score: f32,
    kind: i32,
}

/// What the proto says, defaults applied.
struct Model {
    pieces: Vec<Entry>,
    unigram: bool,
    byte_fallback: bool,
    unk_id: i32,
    bos: Option<String>,
    eos: Option<String>,
    unk: Option<String>,
    charsmap: Vec<u8>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

fn read_model(path: &Path) -> Result<Model> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    let proto = ModelProto::decode(bytes.as_slice()).map_err(|e| {
        anyhow!(
            "{}: not a sentencepiece model ({e}); download it again",
            path.display()
        )
    })?;
    if proto.pieces.is_empty() {
        bail!(
            "{}: a sentencepiece model without pieces; download it again",
            path.display()
        );
    }
    let t = proto.trainer_spec.unwrap_or_default();
    let n = proto.normalizer_spec.unwrap_or_default();
    let unigram = match t.model_type.unwrap_or(1) {
        1 => true,
        2 => false,
        other => bail!(
            "{}: the sentencepiece model type is {} (only BPE and Unigram models are \
             supported); make tokenizer.json in Python: AutoTokenizer.from_pretrained\
             (\"<model>\").save_pretrained(\"<folder>\"), and put it beside config.json",
            path.display(),
            match other {
                3 => "WORD".to_string(),
                4 => "CHAR".to_string(),
                o => o.to_string(),
            }
        ),
    };
    let piece_name = |id: Option<i32>, default_id: i32, name: Option<String>, default: &str| {
        (id.unwrap_or(default_id) >= 0).then(|| name.unwrap_or_else(|| default.to_string()))
    };
    let mut seen = HashSet::new();
    let pieces = proto
        .pieces
        .into_iter()
        .map(|p| {
            let piece = p.piece.unwrap_or_default();
            if !seen.insert(piece.clone()) {
                bail!(
                    "{}: the piece {piece:?} appears twice; the file is damaged, download it again",
                    path.display()
                );
            }
            Ok(Entry {
                piece,
                score: p.score.unwrap_or(0.0),
                kind: p.kind.unwrap_or(NORMAL),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Model {
        pieces,
        unigram,
        byte_fallback: t.byte_fallback.unwrap_or(false),
        unk_id: t.unk_id.unwrap_or(0),
        unk: piece_name(t.unk_id, 0, t.unk_piece, "<unk>"),
        bos: piece_name(t.bos_id, 1, t.bos_piece, "<s>"),
        eos: piece_name(t.eos_id, 2, t.eos_piece, "</s>"),
        charsmap: n.precompiled_charsmap.unwrap_or_default(),
        add_dummy_prefix: n.add_dummy_prefix.unwrap_or(true),
        remove_extra_whitespaces: n.remove_extra_whitespaces.unwrap_or(true),
        escape_whitespaces: n.escape_whitespaces.unwrap_or(true),
    })
}

/// Builds the tokenizer of the sentencepiece model at `path` and the settings files beside
/// it. Errors name the file and say what to do.
pub fn build(path: &Path) -> Result<Tokenizer> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let settings = Settings::read(dir)?;
    let model = read_model(path)?;
    match settings.tokenizer_class() {
        Some(class) if LLAMA_CLASSES.contains(&class) => llama(&model, &settings, path),
        None => from_proto(&model, &settings, path),
        Some(class) => bail!(
            "{}: tokenizer_class is {class}, and the model has no tokenizer.json; softtune \
             builds a tokenizer from tokenizer.model only for LlamaTokenizer (or with no \
             tokenizer_class, from the model's own sentencepiece settings). Make \
             tokenizer.json in Python: AutoTokenizer.from_pretrained(\"<model>\")\
             .save_pretrained(\"<folder>\"), put it beside config.json and point --model there",
            settings.config_path().display()
        ),
    }
}

/// transformers' `LlamaTokenizer` built from the sentencepiece model.
fn llama(model: &Model, settings: &Settings, path: &Path) -> Result<Tokenizer> {
    if model.unigram {
        bail!(
            "{}: LlamaTokenizer needs a BPE sentencepiece model, and this one is Unigram; \
             the tokenizer files belong to another model",
            path.display()
        );
    }
    let add_prefix_space = settings.flag("add_prefix_space")?.unwrap_or(true);
    let legacy = settings.flag("legacy")?.unwrap_or(false);

    let vocab: HashMap<&str, u32> = model
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.piece.as_str(), i as u32))
        .collect();
    // Every split of a piece into two pieces, by the piece's id, shorter left part first.
    let mut merges = Vec::new();
    for p in &model.pieces {
        for (at, _) in p.piece.char_indices().skip(1) {
            let (l, r) = p.piece.split_at(at);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                merges.push((l.to_string(), r.to_string()));
            }
        }
    }
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<Vocab>(),
            merges,
        )
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| anyhow!("{}: cannot build the BPE model: {e}", path.display()))?;
    let mut tok = Tokenizer::new(bpe);
    let scheme = match (add_prefix_space, legacy) {
        (false, _) => PrependScheme::Never,
        (true, true) => PrependScheme::Always,
        (true, false) => PrependScheme::First,
    };
    tok.with_pre_tokenizer(Some(Metaspace::new(SPACE, scheme, false)));
    tok.with_decoder(Some(decoder(true, add_prefix_space)?));

    let pieces = proto_tokens(model, true);
    settings.add_tokens(
        &mut tok,
        pieces,
        &[
            ("bos_token", "<s>"),
            ("eos_token", "</s>"),
            ("unk_token", "<unk>"),
        ],
        false,
    )?;
    Ok(tok)
}

/// The tokenizer of the model's own sentencepiece settings (transformers' build for a
/// `tokenizer.model` with no tokenizer class).
fn from_proto(model: &Model, settings: &Settings, path: &Path) -> Result<Tokenizer> {
    let legacy = settings.flag("legacy")?.unwrap_or(true);
    let user_defined: Vec<&str> = model
        .pieces
        .iter()
        .filter(|p| p.kind == USER_DEFINED)
        .map(|p| p.piece.as_str())
        .collect();

    let mut tok = if model.unigram {
        let vocab = model
            .pieces
            .iter()
            .map(|p| (p.piece.clone(), f64::from(p.score)))
            .collect();
        let unk = usize::try_from(model.unk_id).ok();
        let unigram = Unigram::from(vocab, unk, model.byte_fallback)
            .map_err(|e| anyhow!("{}: cannot build the Unigram model: {e}", path.display()))?;
        Tokenizer::new(unigram)
    } else {
        Tokenizer::new(scored_bpe(model, settings, !user_defined.is_empty(), path)?)
    };
    tok.with_normalizer(Some(proto_normalizer(model, legacy, path)?))
        .map_err(|e| anyhow!("{}: cannot set the normalizer: {e}", path.display()))?;
    if let Some(pre) = proto_pre_tokenizer(model, legacy, &user_defined, path)? {
        tok.with_pre_tokenizer(Some(pre));
    }
    tok.with_decoder(Some(decoder(model.byte_fallback, model.add_dummy_prefix)?));

    // Control pieces are special; user-defined pieces are the pre-tokenizer's.
    let pieces = proto_tokens(model, false);
    let mut defaults = Vec::new();
    for (role, piece) in [
        ("bos_token", &model.bos),
        ("eos_token", &model.eos),
        ("unk_token", &model.unk),
    ] {
        if let Some(p) = piece {
            defaults.push((role, p.as_str()));
        }
    }
    settings.add_tokens(
        &mut tok,
        pieces,
        &defaults,
        model.add_dummy_prefix && settings.has_added_tokens_decoder(),
    )?;
    Ok(tok)
}

/// The BPE of a BPE sentencepiece model: its pieces (renamed where `added_tokens_decoder`
/// gives a placeholder piece its real name), merges of normal pieces ranked by score, then by
/// the merged piece's id. `whole_words`: a pre-token that is a piece is emitted whole (the
/// user-defined pieces the pre-tokenizer isolates).
fn scored_bpe(model: &Model, settings: &Settings, whole_words: bool, path: &Path) -> Result<BPE> {
    let names: HashMap<u32, String> = settings.declared_contents()?.into_iter().collect();
    let kept: HashSet<&str> = model
        .pieces
        .iter()
        .enumerate()
        .filter(|(i, _)| !names.contains_key(&(*i as u32)))
        .map(|(_, p)| p.piece.as_str())
        .collect();
    let tokens: Vec<String> = model
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| match names.get(&(i as u32)) {
            Some(name) if !kept.contains(name.as_str()) => name.clone(),
            _ => p.piece.clone(),
        })
        .collect();
    let normal: HashMap<&str, (f32, usize)> = model
        .pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind == NORMAL)
        .map(|(i, p)| (tokens[i].as_str(), (p.score, i)))
        .collect();
    let mut ranked: Vec<(f32, usize, &str, &str)> = Vec::new();
    for (token, &(score, id)) in &normal {
        for (at, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(at);
            if normal.contains_key(l) && normal.contains_key(r) {
                ranked.push((score, id, l, r));
            }
        }
    }
    // Higher scores first (equal scores, -0 and 0 included, by id, then by the split).
    ranked.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(b.2))
            .then(a.3.cmp(b.3))
    });
    let merges = ranked
        .into_iter()
        .map(|(_, _, l, r)| (l.to_string(), r.to_string()))
        .collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(model.byte_fallback)
        .ignore_merges(whole_words);
    if let Some(unk) = &model.unk {
        builder = builder.unk_token(unk.clone());
    }
    builder
        .build()
        .map_err(|e| anyhow!("{}: cannot build the BPE model: {e}", path.display()))
}

/// The normalizer spec as sentencepiece applies it: the precompiled character map, extra-space
/// removal, whitespace escaping, and (`legacy`) a dummy prefix even before a leading `▁`.
fn proto_normalizer(model: &Model, legacy: bool, path: &Path) -> Result<Sequence> {
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if !model.charsmap.is_empty() {
        let charsmap = Precompiled::from(&model.charsmap).map_err(|e| {
            anyhow!(
                "{}: the precompiled character map is damaged ({e}); download it again",
                path.display()
            )
        })?;
        normalizers.push(NormalizerWrapper::Precompiled(charsmap));
    }
    if model.remove_extra_whitespaces {
        // Only spaces: sentencepiece leaves other whitespace alone.
        normalizers.push(NormalizerWrapper::Replace(replace(
            ReplacePattern::Regex(r"\A +| +\z".into()),
            "",
        )?));
        normalizers.push(NormalizerWrapper::Replace(replace(
            ReplacePattern::Regex(" {2,}".into()),
            " ",
        )?));
    }
    if model.escape_whitespaces {
        normalizers.push(NormalizerWrapper::Replace(replace(" ", "▁")?));
    }
    if model.add_dummy_prefix && legacy {
        // Metaspace skips the prefix when the text already starts with ▁; sentencepiece does
        // not.
        normalizers.push(NormalizerWrapper::Replace(replace(
            ReplacePattern::Regex(r"\A▁".into()),
            "▁▁",
        )?));
    }
    Ok(Sequence::new(normalizers))
}

/// The dummy prefix (before every chunk between added tokens when `legacy`, else once), then
/// the user-defined pieces isolated, longest first (sentencepiece emits them whole).
fn proto_pre_tokenizer(
    model: &Model,
    legacy: bool,
    user_defined: &[&str],
    path: &Path,
) -> Result<Option<PreSequence>> {
    let mut pre: Vec<PreTokenizerWrapper> = Vec::new();
    if model.add_dummy_prefix {
        let scheme = if legacy {
            PrependScheme::Always
        } else {
            PrependScheme::First
        };
        pre.push(PreTokenizerWrapper::Metaspace(Metaspace::new(
            SPACE, scheme, false,
        )));
    }
    if !user_defined.is_empty() {
        let mut sorted = user_defined.to_vec();
        sorted.sort_by_key(|p| std::cmp::Reverse(p.chars().count()));
        let pattern = sorted
            .iter()
            .map(|p| regex::escape(p))
            .collect::<Vec<_>>()
            .join("|");
        let split = Split::new(
            SplitPattern::Regex(pattern),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| anyhow!("{}: user-defined pieces: {e}", path.display()))?;
        pre.push(PreTokenizerWrapper::Split(split));
    }
    Ok((!pre.is_empty()).then(|| PreSequence::new(pre)))
}

/// `▁` back to spaces, byte pieces back to bytes (`byte_fallback`), and the space of the
/// prefix dropped (`strip_prefix`; `Strip` works per token, so the tokens are fused first).
fn decoder(byte_fallback: bool, strip_prefix: bool) -> Result<DecoderSequence> {
    let mut decoders = vec![DecoderWrapper::Replace(replace(SPACE.to_string(), " ")?)];
    if byte_fallback {
        decoders.push(DecoderWrapper::ByteFallback(ByteFallback::new()));
    }
    if byte_fallback || strip_prefix {
        decoders.push(DecoderWrapper::Fuse(Fuse::new()));
    }
    if strip_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    Ok(DecoderSequence::new(decoders))
}

/// The proto's control pieces (special) and, with `user_defined`, its user-defined pieces
/// (ordinary), as added tokens matched on the raw text, in id order.
fn proto_tokens(model: &Model, user_defined: bool) -> Vec<AddedToken> {
    model
        .pieces
        .iter()
        .filter(|p| p.kind == CONTROL || (user_defined && p.kind == USER_DEFINED))
        .map(|p| AddedToken::from(p.piece.clone(), p.kind == CONTROL).normalized(false))
        .collect()
}

fn replace(pattern: impl Into<ReplacePattern>, content: &str) -> Result<Replace> {
    Replace::new(pattern, content).map_err(|e| anyhow!("cannot build a normalizer: {e}"))
}
