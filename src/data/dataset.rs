//! Dataset: scan a file or folder, tokenize every file (in parallel), append the model's EOS
//! after each, concatenate, cache the ids as little-endian u32 in the run folder, cut rows,
//! and split off a deterministic held-out set.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use super::{FileText, read_dataset_text};
use crate::model::tokenizer::Tokenizer;
use crate::rng::SplitMix64;

/// One input file as scanned.
#[derive(Debug, Clone, PartialEq)]
pub struct DataFile {
    pub path: PathBuf,
    pub size: u64,
    pub mtime: u64,
}

/// Files of a dataset: `path` itself, or the files under it whose name matches `glob`
/// (recursively, ignoring case, hidden files and folders left out), sorted by path.
pub fn scan(path: &Path, glob: &str) -> Result<Vec<DataFile>> {
    let pattern = glob::Pattern::new(glob)
        .map_err(|e| anyhow!("dataset glob \"{glob}\" is not a valid pattern: {e}"))?;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("dataset {}: no such file or folder", path.display()))?;
    let mut paths = Vec::new();
    if meta.is_file() {
        paths.push(path.to_path_buf());
    } else if super::scrivener::is_package(path) {
        // A Scrivener project's folder is one document (a package on macOS), whatever the
        // glob: its manuscript, read through its .scrivx file.
        paths.push(super::scrivener::project_file(path)?);
    } else {
        walk(path, &pattern, &mut paths)?;
        if paths.is_empty() {
            bail!("{}", nothing_matches(path, glob)?);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            // A Scrivener project's text is in many files: its size is theirs, its time the
            // newest, so editing a scene makes a new token cache.
            let sources = if super::scrivener::is_project_file(&p) {
                super::scrivener::source_files(&p)
            } else {
                vec![p.clone()]
            };
            let (mut size, mut mtime) = (0, 0);
            for source in &sources {
                let m = std::fs::metadata(source)
                    .with_context(|| format!("{}: cannot read", source.display()))?;
                size += m.len();
                mtime = mtime.max(
                    m.modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs()),
                );
            }
            Ok(DataFile {
                path: p,
                size,
                mtime,
            })
        })
        .collect()
}

/// Why a dataset folder has no files for `glob`, and what to do: when it holds documents of
/// a kind softtune reads (EPUB books, Word documents, HTML pages), the glob that takes them.
fn nothing_matches(dir: &Path, glob: &str) -> Result<String> {
    let mut all = Vec::new();
    walk(dir, &glob::Pattern::new("*")?, &mut all)?;
    let found: Vec<(usize, &super::Document)> = super::DOCUMENTS
        .iter()
        .map(|d| (all.iter().filter(|p| d.is(p)).count(), d))
        .filter(|(n, _)| *n > 0)
        .collect();
    if found.is_empty() {
        return Ok(format!(
            "dataset folder {} has no files matching \"{glob}\"; add .txt files or change the glob",
            dir.display()
        ));
    }
    let list = |f: &dyn Fn(&(usize, &super::Document)) -> String, sep: &str| {
        found.iter().map(f).collect::<Vec<_>>().join(sep)
    };
    Ok(format!(
        "dataset folder {} has no files matching \"{glob}\" but {}; set the glob to {} to learn from them",
        dir.display(),
        list(&|(n, d)| format!("{n} {}(s)", d.what), " and "),
        list(&|(_, d)| format!("\"{}\"", d.glob), " or "),
    ))
}

fn walk(dir: &Path, pattern: &glob::Pattern, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("{}: cannot list", dir.display()))?;
        let p = e.path();
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let ft = e.file_type()?;
        if ft.is_dir() && super::scrivener::is_package(&p) {
            // A Scrivener project is one document, its .scrivx file: the RTF files inside
            // (research, trash and notes among them) are not read one by one.
            if let Ok(scrivx) = super::scrivener::project_file(&p)
                && matches(pattern, &scrivx)
            {
                out.push(scrivx);
            }
        } else if ft.is_dir() {
            walk(&p, pattern, out)?;
        } else if matches(pattern, &p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Whether the file name of `path` matches `pattern`.
fn matches(pattern: &glob::Pattern, path: &Path) -> bool {
    pattern.matches_with(
        &path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        // "*.txt" takes "NOTES.TXT" too, as Windows and macOS file dialogs do.
        glob::MatchOptions {
            case_sensitive: false,
            ..glob::MatchOptions::new()
        },
    )
}

/// Cache key: the contents of the tokenizer's file and of the files beside it that shape it
/// (GPT-2's merges, the settings of slow tokenizers: see [`Tokenizer::companion_files`]), EOS
/// id, the file list with sizes and mtimes, the versions of the text extraction that apply,
/// and whether hard-wrapped lines are joined. For `tokenizer.json` only its own contents.
pub fn cache_key(
    tokenizer: &Path,
    eos: u32,
    files: &[DataFile],
    unwrap_lines: bool,
) -> Result<String> {
    let mut h = Sha256::new();
    h.update(
        std::fs::read(tokenizer)
            .with_context(|| format!("{}: cannot read", tokenizer.display()))?,
    );
    for companion in Tokenizer::companion_files(tokenizer) {
        let name = companion
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        h.update(name.unwrap_or_default().as_bytes());
        match std::fs::read(&companion) {
            Ok(bytes) => {
                h.update([1]);
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => h.update([0]),
            Err(e) => bail!("{}: cannot read: {e}", companion.display()),
        }
    }
    h.update(eos.to_le_bytes());
    for document in &super::DOCUMENTS {
        if files.iter().any(|f| document.is(&f.path)) {
            h.update(document.version.as_bytes());
        }
    }
    // Text files whose text the Gutenberg cleaning may change (books' extraction versions
    // cover it for them), those cut into stories, and text files and HTML pages whose
    // mangled characters are put back.
    for (i, f) in files.iter().enumerate() {
        let text_file = super::is_text_file(&f.path);
        let page = super::html::is_page(&f.path);
        if !text_file && !page {
            continue;
        }
        let bytes =
            std::fs::read(&f.path).with_context(|| format!("{}: cannot read", f.path.display()))?;
        let mut cleanings = Vec::new();
        if text_file {
            if super::gutenberg::mentions(&bytes) {
                cleanings.push(super::gutenberg::VERSION);
            }
            if super::stories::mentions(&bytes) {
                cleanings.push(super::stories::VERSION);
            }
            if super::decode_text(&bytes).is_ok_and(|text| super::mojibake::shows_mangling(&text)) {
                cleanings.push(super::mojibake::VERSION);
            }
        } else if super::html::shows_mangling(&bytes) {
            cleanings.push(super::mojibake::VERSION);
        }
        for version in cleanings {
            h.update(version.as_bytes());
            h.update((i as u64).to_le_bytes());
        }
    }
    if unwrap_lines {
        h.update(super::unwrap::VERSION.as_bytes());
    }
    for f in files {
        h.update(f.path.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(f.size.to_le_bytes());
        h.update(f.mtime.to_le_bytes());
    }
    let d = h.finalize();
    Ok(d.iter().take(12).map(|b| format!("{b:02x}")).collect())
}

/// A dataset file that is hard-wrapped, and the width of its lines.
pub type Wrapped = (PathBuf, usize);

/// What reading the dataset's files found, besides their text. Kept beside the token
/// cache (`tokens-KEY.found.json`), so a run planned from the cache reports it too.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Found {
    /// The files that are hard-wrapped, with their width.
    pub wrapped: Vec<Wrapped>,
    /// The text files cut into stories at `<|endoftext|>` ([`super::stories`]), with their
    /// number of stories.
    pub separated: Vec<(PathBuf, usize)>,
    /// The files whose characters decoded the wrong way were put back
    /// ([`super::mojibake`]), with what was done.
    pub repaired: Vec<Repaired>,
}

/// A file whose characters decoded the wrong way were put back, and what was done.
pub type Repaired = (PathBuf, super::mojibake::Repaired);

impl Found {
    /// Records what reading the file at `path` found in its `text`.
    pub fn add(&mut self, path: &Path, text: &FileText) {
        if let Some(width) = text.wrapped {
            self.wrapped.push((path.to_path_buf(), width));
        }
        if text.separated {
            self.separated
                .push((path.to_path_buf(), text.stories().len()));
        }
        if let Some(repaired) = &text.repaired {
            self.repaired.push((path.to_path_buf(), repaired.clone()));
        }
    }
}

/// Tokenizes every file's text ([`read_dataset_text`]; no BOS), each story of it (the whole
/// text, or the stories a text file's `<|endoftext|>` separators cut it into) followed by
/// `eos`, concatenated; with what reading the files found. Files are split across worker
/// threads; order is preserved.
pub fn tokenize_files(
    tok: &Tokenizer,
    files: &[DataFile],
    eos: u32,
    unwrap_lines: bool,
) -> Result<(Vec<u32>, Found)> {
    let mut read = Vec::with_capacity(files.len());
    let mut found = Found::default();
    for f in files {
        let text = read_dataset_text(&f.path, unwrap_lines)?;
        found.add(&f.path, &text);
        read.push(text);
    }
    let stories: Vec<&str> = read.iter().flat_map(|text| text.stories()).collect();
    Ok((tokenize_texts(tok, &stories, Some(eos))?, found))
}

/// Token ids of a text file given to evaluation: its text, or its stories with `eos` between
/// them when it is [`FileText::separated`].
pub fn tokenize_eval_text(tok: &Tokenizer, text: &FileText, eos: Option<u32>) -> Result<Vec<u32>> {
    match eos {
        Some(eos) if text.separated => {
            let mut ids = tokenize_texts(tok, &text.stories(), Some(eos))?;
            ids.pop();
            Ok(ids)
        }
        _ => tokenize_text(tok, &text.text),
    }
}

/// Token ids of one text (no BOS or EOS), as [`Tokenizer::encode`] gives them, on every core
/// where the tokenizer can be cut at paragraphs.
pub fn tokenize_text(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tokenize_texts(tok, &[text], None)
}

/// The ids of `texts`, concatenated, each followed by `eos` when there is one.
fn tokenize_texts<T: AsRef<str> + Sync>(
    tok: &Tokenizer,
    texts: &[T],
    eos: Option<u32>,
) -> Result<Vec<u32>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Large texts are cut at paragraph boundaries so every core has work; the pieces after
    // the first continue their text. `None` marks the end of a text.
    let mut pieces: Vec<Option<(&str, bool)>> = Vec::new();
    for text in texts {
        let text = text.as_ref();
        let parts = if tok.paragraph_cuts_are_exact() {
            split_paragraphs(text, 256 * 1024)
        } else {
            vec![text]
        };
        for (n, part) in parts.into_iter().enumerate() {
            pieces.push(Some((part, n > 0)));
        }
        pieces.push(None);
    }
    let chunk = pieces.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<Vec<u32>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = pieces
            .chunks(chunk)
            .map(|group| {
                s.spawn(move || {
                    group
                        .iter()
                        .map(|piece| match piece {
                            None => Ok(eos.into_iter().collect()),
                            Some(("", _)) => Ok(Vec::new()),
                            Some((text, true)) => tok.encode_continuation(text),
                            Some((text, false)) => tok.encode(text),
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a tokenizer thread panicked")))
            })
            .collect()
    });
    let mut out = Vec::new();
    for r in results {
        for ids in r? {
            out.extend_from_slice(&ids);
        }
    }
    Ok(out)
}

/// Splits `text` into pieces of at least `target` bytes where byte-level BPE tokenization
/// is unchanged by the cut: just before the last newline of a run of two or more newlines
/// that is followed by a non-whitespace character (the GPT-2 pre-tokenizer makes the run
/// minus its last newline one piece, and the last newline another, in both cases).
pub fn split_paragraphs(text: &str, target: usize) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = target;
    while i + 2 < b.len() {
        if b[i] == b'\n' && b[i + 1] == b'\n' {
            let mut end = i;
            while end < b.len() && b[end] == b'\n' {
                end += 1;
            }
            let next = text[end..].chars().next();
            if next.is_some_and(|c| !c.is_whitespace()) {
                let cut = end - 1;
                out.push(&text[start..cut]);
                start = cut;
                i = cut + target;
                continue;
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out.push(&text[start..]);
    out
}

/// What to tell the user of the hard-wrapped files found: that their lines are joined
/// (`joined`), or that their line breaks would be learnt (the caller says how to join them).
/// `None` when no file is hard-wrapped.
pub fn wrapped_note(wrapped: &[Wrapped], joined: bool) -> Option<String> {
    let lo = wrapped.iter().map(|w| w.1).min()?;
    let hi = wrapped.iter().map(|w| w.1).max().unwrap_or(lo);
    let width = if lo == hi {
        format!("{lo}")
    } else {
        format!("{lo}–{hi}")
    };
    let names = some_names(wrapped.iter().map(|w| w.0.as_path()));
    let files = match wrapped.len() {
        1 => "1 file is".to_string(),
        n => format!("{n} files are"),
    };
    Some(if joined {
        format!(
            "{files} hard-wrapped at about {width} characters ({names}): their lines are joined into paragraphs"
        )
    } else {
        format!(
            "{files} hard-wrapped ({names}): lines of about {width} characters break inside paragraphs, and the prompt would learn to break lines so"
        )
    })
}

/// What to tell the user of the text files cut into stories at `<|endoftext|>`
/// ([`Found::separated`]); `None` when there are none.
pub fn separated_note(separated: &[(PathBuf, usize)]) -> Option<String> {
    if separated.is_empty() {
        return None;
    }
    let stories: usize = separated.iter().map(|s| s.1).sum();
    let names = some_names(separated.iter().map(|s| s.0.as_path()));
    let files = match separated.len() {
        1 => "1 file".to_string(),
        n => format!("{n} files"),
    };
    let hold = if separated.len() == 1 {
        "holds"
    } else {
        "hold"
    };
    Some(format!(
        "{files} ({names}) {hold} {stories} stories separated by {}: each ends with the model's EOS token, as a file does",
        super::stories::SEPARATOR
    ))
}

/// What to tell the user of the files whose characters decoded the wrong way were put back
/// ([`Found::repaired`]); `None` when there are none.
pub fn repaired_note(repaired: &[Repaired]) -> Option<String> {
    if repaired.is_empty() {
        return None;
    }
    let characters: usize = repaired.iter().map(|r| r.1.characters).sum();
    let names = some_names(repaired.iter().map(|r| r.0.as_path()));
    let files = match repaired.len() {
        1 => "1 file".to_string(),
        n => format!("{n} files"),
    };
    let example = repaired
        .iter()
        .find_map(|r| r.1.example.as_ref())
        .map(|(from, to)| format!(" (\"{from}\" for \"{to}\")"))
        .unwrap_or_default();
    let put_back = match characters {
        1 => "1 character".to_string(),
        n => format!("{n} characters"),
    };
    Some(format!(
        "{files} ({names}) had text decoded the wrong way before it was saved{example}: {put_back} put back"
    ))
}

/// The file names of the first three `paths`, and how many more there are.
fn some_names<'a>(paths: impl ExactSizeIterator<Item = &'a Path>) -> String {
    const NAMED: usize = 3;
    let n = paths.len();
    let mut names: Vec<String> = paths
        .take(NAMED)
        .map(|p| {
            p.file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
        })
        .collect();
    if n > NAMED {
        names.push(format!("{} more", n - NAMED));
    }
    names.join(", ")
}

/// The dataset's token ids, as [`load_or_tokenize`] found or made them.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// Their [`cache_key`].
    pub key: String,
    /// Whether they came from the cache (then no file was read).
    pub cache_hit: bool,
    /// What reading the files found; on a cache hit, what was found when the cache was
    /// made (nothing for a cache made before softtune kept it).
    pub found: Found,
}

/// Where [`load_or_tokenize`] keeps what reading the files found, beside the cached ids.
fn found_path(ids: &Path) -> PathBuf {
    ids.with_extension("found.json")
}

/// Loads cached ids or tokenizes ([`tokenize_files`]) and writes the cache (atomically).
pub fn load_or_tokenize(
    tok: &Tokenizer,
    files: &[DataFile],
    eos: u32,
    unwrap_lines: bool,
    cache_dir: &Path,
) -> Result<Tokens> {
    let key = cache_key(&tok.path, eos, files, unwrap_lines)?;
    let path = cache_dir.join(format!("tokens-{key}.u32"));
    if let Ok(bytes) = std::fs::read(&path)
        && bytes.len() % 4 == 0
    {
        let ids = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // A missing or unreadable record only loses the notes, never the run.
        let found = std::fs::read(found_path(&path))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        return Ok(Tokens {
            ids,
            key,
            cache_hit: true,
            found,
        });
    }
    let (ids, found) = tokenize_files(tok, files, eos, unwrap_lines)?;
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("{}: cannot create the run folder", cache_dir.display()))?;
    // The record first: a cache hit then always has it.
    let record = serde_json::to_vec_pretty(&found)
        .map_err(|e| anyhow!("cannot record what the dataset's files hold: {e}"))?;
    crate::export::write_atomic(&found_path(&path), &record)?;
    super::write_token_file(&path, &ids)?;
    Ok(Tokens {
        ids,
        key,
        cache_hit: false,
        found,
    })
}

/// Rows of `len` tokens and the held-out split.
#[derive(Debug, Clone)]
pub struct Rows {
    pub len: usize,
    pub train: Vec<Vec<u32>>,
    pub eval: Vec<Vec<u32>>,
}

/// Cuts `ids` into rows of `len` tokens (tail dropped) and holds out
/// `max(1, round(eval_fraction · rows))` rows chosen by a seeded shuffle (none when
/// `eval_fraction` is 0).
pub fn make_rows(ids: &[u32], len: usize, eval_fraction: f64, seed: u64) -> Result<Rows> {
    let n = ids.len() / len;
    if n == 0 {
        bail!(
            "the dataset has {} tokens, fewer than one sequence of {len}; add text or lower training.tokens_per_sequence",
            ids.len()
        );
    }
    let n_eval = if eval_fraction > 0.0 {
        ((n as f64 * eval_fraction).round() as usize).max(1)
    } else {
        0
    };
    if n_eval >= n {
        bail!(
            "the dataset makes only {n} sequence(s) of {len} tokens: not enough to hold out {n_eval} for evaluation and train on the rest; add text, lower training.tokens_per_sequence or set training.eval_fraction = 0"
        );
    }
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed ^ 0x5eed_e7a1).shuffle(&mut order);
    let mut is_eval = vec![false; n];
    for &i in &order[..n_eval] {
        is_eval[i] = true;
    }
    let mut train = Vec::with_capacity(n - n_eval);
    let mut eval = Vec::with_capacity(n_eval);
    for (i, row) in ids.chunks_exact(len).enumerate() {
        if is_eval[i] {
            eval.push(row.to_vec());
        } else {
            train.push(row.to_vec());
        }
    }
    Ok(Rows { len, train, eval })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A folder of EPUB books or Word documents under the default `*.txt` glob is an error
    /// that says how to read them.
    #[test]
    fn documents_are_found_by_their_glob() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("series")).unwrap();
        std::fs::write(dir.path().join("series/One.EPUB"), b"zip").unwrap();
        std::fs::write(dir.path().join("notes.md"), b"md").unwrap();
        let e = format!("{:#}", scan(dir.path(), "*.txt").unwrap_err());
        assert!(
            e.contains("but 1 EPUB book(s); set the glob to \"*.epub\""),
            "{e}"
        );
        let found = scan(dir.path(), "*.epub").unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].path.ends_with("series/One.EPUB"));
        std::fs::write(dir.path().join("draft 1.docx"), b"zip").unwrap();
        std::fs::write(dir.path().join("series/draft 2.docx"), b"zip").unwrap();
        let e = format!("{:#}", scan(dir.path(), "*.txt").unwrap_err());
        assert!(
            e.contains("but 1 EPUB book(s) and 2 Word document(s); set the glob to \"*.epub\" or \"*.docx\""),
            "{e}"
        );
        assert_eq!(scan(dir.path(), "*.docx").unwrap().len(), 2);
        // Saved web pages, .html or .htm: one glob takes both.
        std::fs::create_dir(dir.path().join("ao3")).unwrap();
        std::fs::write(dir.path().join("ao3/Work_1.html"), b"<p>").unwrap();
        std::fs::write(dir.path().join("ao3/CH2.HTM"), b"<p>").unwrap();
        let e = format!("{:#}", scan(dir.path(), "*.txt").unwrap_err());
        assert!(
            e.contains(
                "and 2 HTML page(s); set the glob to \"*.epub\" or \"*.docx\" or \"*.htm*\""
            ),
            "{e}"
        );
        assert_eq!(scan(dir.path(), "*.htm*").unwrap().len(), 2);
        std::fs::remove_dir_all(dir.path().join("ao3")).unwrap();
        std::fs::remove_file(dir.path().join("series/One.EPUB")).unwrap();
        std::fs::remove_file(dir.path().join("draft 1.docx")).unwrap();
        std::fs::remove_file(dir.path().join("series/draft 2.docx")).unwrap();
        let e = format!("{:#}", scan(dir.path(), "*.txt").unwrap_err());
        assert!(!e.contains("EPUB") && e.contains("add .txt files"), "{e}");
    }

    /// A Scrivener project is one document: its folder reads as its .scrivx whatever the
    /// glob; in a folder of projects the RTF and .txt files inside them are not taken one by
    /// one, and the hint names the glob that takes the projects. Its size counts the Draft's
    /// files, and editing a scene changes its time (so the token cache is made anew).
    #[test]
    fn scrivener_projects_are_one_document() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scrivener/Novel.scriv");
        let dir = tempfile::tempdir().unwrap();
        let package = dir.path().join("books/Novel.scriv");
        copy_tree(&fixture, &package);
        let scrivx = package.join("Novel.scrivx");

        let found = scan(&package, "*.txt").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, scrivx);
        assert!(found[0].size > std::fs::metadata(&scrivx).unwrap().len() + 1000);

        let e = format!("{:#}", scan(dir.path(), "*.txt").unwrap_err());
        assert!(
            e.contains("but 1 Scrivener project(s); set the glob to \"*.scrivx\""),
            "{e}"
        );
        let e = format!("{:#}", scan(dir.path(), "*.rtf").unwrap_err());
        assert!(e.contains("1 Scrivener project(s)"), "{e}");
        let found = scan(dir.path(), "*.scrivx").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, scrivx);

        // A scene edited later than the rest: the project's time is the scene's.
        let scene = package.join("Files/Data/5A1C2E3F-0000-4000-8000-000000000008/content.rtf");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&scene)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let edited = scan(&package, "*.txt").unwrap();
        assert!(edited[0].mtime > found[0].mtime, "{edited:?} {found:?}");
    }

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    /// The token cache follows every file a slow tokenizer is built from; tokenizer.json's
    /// key is its own contents only.
    #[test]
    fn cache_key_follows_the_tokenizer_settings_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let files = [DataFile {
            path: d.join("data.txt"),
            size: 5,
            mtime: 7,
        }];
        std::fs::write(d.join("data.txt"), b"hello").unwrap();
        let model = d.join("tokenizer.model");
        std::fs::write(&model, b"spm").unwrap();
        let json = d.join("tokenizer.json");
        std::fs::write(&json, b"{}").unwrap();
        let spm_key = |eos| cache_key(&model, eos, &files, false).unwrap();
        let json_key = cache_key(&json, 2, &files, false).unwrap();

        let bare = spm_key(2);
        assert_ne!(bare, spm_key(3), "the EOS id");
        std::fs::write(d.join("tokenizer_config.json"), br#"{"legacy": true}"#).unwrap();
        let legacy = spm_key(2);
        assert_ne!(legacy, bare, "a settings file appearing");
        std::fs::write(d.join("tokenizer_config.json"), br#"{"legacy": false}"#).unwrap();
        assert_ne!(spm_key(2), legacy, "a settings file changing");
        std::fs::write(d.join("added_tokens.json"), br#"{"[PAD]": 3}"#).unwrap();
        assert_ne!(spm_key(2), legacy);
        // tokenizer.json is the whole tokenizer: the settings files do not enter its key.
        assert_eq!(cache_key(&json, 2, &files, false).unwrap(), json_key);

        let vocab = d.join("vocab.json");
        std::fs::write(&vocab, b"{}").unwrap();
        std::fs::write(d.join("merges.txt"), b"#version: 0.2\n").unwrap();
        let before = cache_key(&vocab, 2, &files, false).unwrap();
        std::fs::write(d.join("merges.txt"), b"#version: 0.2\na b\n").unwrap();
        assert_ne!(
            cache_key(&vocab, 2, &files, false).unwrap(),
            before,
            "GPT-2's merges"
        );
    }

    /// A text file that mentions Project Gutenberg (whose header and license reading drops)
    /// has another cache key than one of the same name, size and time that does not.
    #[test]
    fn cache_key_follows_the_gutenberg_cleaning() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let json = d.join("tokenizer.json");
        std::fs::write(&json, b"{}").unwrap();
        let files = [DataFile {
            path: d.join("book.txt"),
            size: 21,
            mtime: 7,
        }];
        let key = |text: &str| {
            std::fs::write(&files[0].path, text).unwrap();
            cache_key(&json, 2, &files, false).unwrap()
        };
        let plain = key("a book of short words");
        assert_eq!(key("another book of words"), plain);
        assert_ne!(key("a Project Gutenberg #"), plain);
        // Stories cut at separators, and characters decoded the wrong way put back.
        assert_ne!(key("a <|endoftext|> b xyz"), plain);
        assert_ne!(key("a cafÃ© of few words"), plain);
        assert_eq!(key("a café of few words!"), plain);
        // An HTML page's mangled characters too.
        let page = [DataFile {
            path: d.join("page.html"),
            size: 21,
            mtime: 7,
        }];
        let page_key = |text: &str| {
            std::fs::write(&page[0].path, text).unwrap();
            cache_key(&json, 2, &page, false).unwrap()
        };
        let correct = page_key("<p>a café of words</p>");
        assert_eq!(page_key("<p>a cafe of words!</p>"), correct);
        assert_ne!(page_key("<p>a cafÃ© of words</p>"), correct);
        // Joining hard-wrapped lines changes the text: another key.
        key("a book of short words");
        assert_ne!(cache_key(&json, 2, &files, true).unwrap(), plain);
    }

    #[test]
    fn paragraph_cuts_tokenize_like_the_whole_text() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let tok = Tokenizer::from_file(&fixtures.join("gpt2/tokenizer.json")).unwrap();
        assert!(tok.paragraph_cuts_are_exact());
        let mut text = std::fs::read_to_string(fixtures.join("tokenizer_corpus.txt")).unwrap();
        text.push_str("\n\n\n\nTrailing paragraph after four newlines.\n\n  indented\n\nEnd");
        let pieces = split_paragraphs(&text, 5_000);
        assert!(
            pieces.len() > 20,
            "the corpus is cut into {} pieces",
            pieces.len()
        );
        assert_eq!(pieces.concat(), text);
        let whole = tok.encode(&text).unwrap();
        let cut: Vec<u32> = pieces.iter().flat_map(|p| tok.encode(p).unwrap()).collect();
        assert_eq!(whole, cut);
    }

    /// Llama-style tokenizers (byte fallback, no newline in any piece) cut exactly too, in
    /// sentencepiece's Metaspace form (the prefix once, never, or before every chunk) and in
    /// Llama-2's `tokenizer.json` form (a `Prepend` normalizer, no pre-tokenizer): the pieces
    /// after the first are tokenized behind a newline. Those whose cuts would not be exact (a
    /// token that strips whitespace, a normalizer that could join across a newline, Unigram)
    /// tokenize whole files.
    #[test]
    fn llama_paragraph_cuts_tokenize_like_the_whole_text() {
        let spm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm_tokenizer");
        let mut text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_corpus.txt"),
        )
        .unwrap();
        text.push_str("\n\n  indented</s>\n\n</s>After\n\n\n<s> End \n\n<s>\n\nX</s>");
        let pieces = split_paragraphs(&text, 5_000);
        assert!(pieces.len() > 20, "{} pieces", pieces.len());

        // Llama-2's tokenizer.json: the word-boundary prefix comes from a normalizer, before
        // the text and after every added token; spaces become `▁` by a `Replace`.
        let dir = tempfile::tempdir().unwrap();
        let mut llama2: serde_json::Value =
            serde_json::from_slice(&std::fs::read(spm.join("converted/tokenizer.json")).unwrap())
                .unwrap();
        llama2["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ]});
        llama2["pre_tokenizer"] = serde_json::Value::Null;
        let llama2_file = dir.path().join("llama2.json");
        std::fs::write(&llama2_file, llama2.to_string()).unwrap();
        // The same with a normalizer that is not known to keep newlines apart.
        llama2["normalizer"]["normalizers"][1]["pattern"] = serde_json::json!({"Regex": "\\s"});
        let regex_file = dir.path().join("regex.json");
        std::fs::write(&regex_file, llama2.to_string()).unwrap();

        for (file, exact) in [
            (spm.join("llama/tokenizer.model"), true),
            (spm.join("noprefix/tokenizer.model"), true),
            (spm.join("legacy/tokenizer.model"), true),
            (spm.join("converted/tokenizer.json"), true),
            (llama2_file, true),
            (regex_file, false),
            (spm.join("declared/tokenizer.model"), false),
            (spm.join("bare/tokenizer.model"), false),
            (spm.join("unigram/tokenizer.model"), false),
        ] {
            let tok = Tokenizer::from_file(&file).unwrap();
            let name = file.display();
            assert_eq!(tok.paragraph_cuts_are_exact(), exact, "{name}");
            if exact {
                let whole = tok.encode(&text).unwrap();
                let mut cut = tok.encode(pieces[0]).unwrap();
                for p in &pieces[1..] {
                    cut.extend(tok.encode_continuation(p).unwrap());
                }
                assert_eq!(whole, cut, "{name}");
                // Where a word-boundary prefix is added, tokenizing the pieces as texts of
                // their own would not give those ids.
                let naive: Vec<u32> = pieces.iter().flat_map(|p| tok.encode(p).unwrap()).collect();
                assert_eq!(
                    whole == naive,
                    file.starts_with(spm.join("noprefix")),
                    "{name}"
                );
                // The pipeline cuts texts over 256 KB the same way, on every core.
                let long = text.repeat(3);
                assert!(split_paragraphs(&long, 256 * 1024).len() > 1);
                assert_eq!(
                    tokenize_text(&tok, &long).unwrap(),
                    tok.encode(&long).unwrap(),
                    "{name}"
                );
            }
        }
    }

    /// A dataset saved by Windows Notepad, as "UTF-8 with BOM" or as "Unicode" (UTF-16 with
    /// CRLF line ends), gives the same tokens as the plain UTF-8 file.
    #[test]
    fn notepad_encodings_tokenize_like_utf8() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let tok = Tokenizer::from_file(&fixtures.join("gpt2/tokenizer.json")).unwrap();
        let text = "Chapter One\n\nThe café was quiet — “too quiet”, said Zoë.\nEnd.\n";
        let windows = text.replace('\n', "\r\n");
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<Vec<u8>> = vec![
            text.as_bytes().to_vec(),
            [b"\xEF\xBB\xBF".as_slice(), windows.as_bytes()].concat(),
            [0xFF, 0xFE]
                .into_iter()
                .chain(windows.encode_utf16().flat_map(u16::to_le_bytes))
                .collect(),
        ];
        let mut tokens = Vec::new();
        for (i, bytes) in files.iter().enumerate() {
            let sub = dir.path().join(i.to_string());
            std::fs::create_dir(&sub).unwrap();
            std::fs::write(sub.join("book.txt"), bytes).unwrap();
            let found = scan(&sub, "*.txt").unwrap();
            tokens.push(tokenize_files(&tok, &found, 0, false).unwrap().0);
        }
        assert!(tokens[0].len() > 10);
        assert_eq!(tokens[1], tokens[0], "UTF-8 with a byte-order mark");
        assert_eq!(tokens[2], tokens[0], "UTF-16");
    }

    #[test]
    fn rows_and_split_are_deterministic() {
        let ids: Vec<u32> = (0..1000).collect();
        let a = make_rows(&ids, 10, 0.1, 3).unwrap();
        let b = make_rows(&ids, 10, 0.1, 3).unwrap();
        assert_eq!((a.train.len(), a.eval.len()), (90, 10));
        assert_eq!(a.eval, b.eval);
        let c = make_rows(&ids, 10, 0.1, 4).unwrap();
        assert_ne!(a.eval, c.eval, "another seed holds out other rows");
        assert_eq!(
            make_rows(&ids, 10, 0.0001, 3).unwrap().eval.len(),
            1,
            "at least one row"
        );
    }
}
