//! The `softtune` binary end to end: `inspect` and `eval` on fixture models, and the
//! one-line errors for bad models.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn softtune(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_softtune"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run softtune");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `softtune ARGS` with `input` on its standard input.
fn softtune_with_input(args: &[&str], input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_softtune"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run softtune");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `softtune eval --model MODEL --text TEXT` with `extra` arguments.
fn eval(model: &str, text: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["eval", "--model", model, "--text", text];
    args.extend_from_slice(extra);
    softtune(&args)
}

/// A writable copy of a fixture model folder.
fn copy_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::write(
            dir.path().join(f),
            std::fs::read(fixtures().join(name).join(f)).unwrap(),
        )
        .unwrap();
    }
    dir
}

fn assert_one_line_error(code: i32, stderr: &str, needles: &[&str]) {
    assert_ne!(code, 0, "expected failure, stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line reason, got:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` missing from: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn inspect_reports_the_model() {
    let (code, out, err) = softtune(&["inspect", fixtures().join("opt_proj").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("architecture    opt"), "{out}");
    assert!(out.contains("parameters      128896"), "{out}");
    assert!(out.contains("embedding width 32"), "{out}");
    assert!(out.contains("hidden size     64"), "{out}");
    assert!(out.contains("vocabulary      512 tokens"), "{out}");
    assert!(out.contains("context length  128"), "{out}");
    assert!(out.contains("stored dtype    float32"), "{out}");

    let (code, out, _) = softtune(&["inspect", fixtures().join("llama").to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("2 key/value heads"), "{out}");
    assert!(out.contains("parameters      139584"), "{out}");
    // softtune's training memory estimate, at the fixture's whole context of 128 tokens.
    let line = out
        .lines()
        .find(|l| l.starts_with("training memory "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("on GPU (float32) at batch 1 × 128 tokens (20 soft); +")
            && line.ends_with(" per extra sequence"),
        "{line}"
    );
}

#[test]
fn inspect_folder_without_config() {
    let dir = copy_model("gpt2");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let (code, _, err) = softtune(&["inspect", dir.path().to_str().unwrap()]);
    assert_one_line_error(code, &err, &["config.json"]);
}

#[test]
fn inspect_unsupported_model_type() {
    let dir = copy_model("gpt2");
    let p = dir.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"gpt2\"", "\"bert\"");
    std::fs::write(&p, text).unwrap();
    let (code, _, err) = softtune(&["inspect", dir.path().to_str().unwrap()]);
    assert_one_line_error(code, &err, &["bert", "not supported", "llama", "gpt_neox"]);
}

#[test]
fn inspect_missing_weights() {
    let dir = copy_model("gpt2");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let (code, _, err) = softtune(&["inspect", dir.path().to_str().unwrap()]);
    assert_one_line_error(code, &err, &["safetensors"]);
}

#[test]
fn inspect_truncated_weights() {
    let dir = copy_model("gpt2");
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    let (code, _, err) = softtune(&["inspect", dir.path().to_str().unwrap()]);
    assert_one_line_error(code, &err, &["model.safetensors", "truncated or corrupt"]);
}

#[test]
fn inspect_corrupt_header() {
    let dir = copy_model("gpt2");
    let p = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    for b in &mut bytes[8..40] {
        *b = b'#';
    }
    std::fs::write(&p, &bytes).unwrap();
    let (code, _, err) = softtune(&["inspect", dir.path().to_str().unwrap()]);
    assert_one_line_error(code, &err, &["model.safetensors", "truncated or corrupt"]);
}

#[test]
fn inspect_tokenizer_larger_than_embedding() {
    let dir = copy_model("gpt2");
    let p = dir.path().join("config.json");
    let text = std::fs::read_to_string(&p).unwrap();
    // config.json disagreeing with the stored embedding is caught first…
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["vocab_size"] = 400.into();
    std::fs::write(&p, v.to_string()).unwrap();
    let (code, _, err) = softtune(&["inspect", dir.path().to_str().unwrap()]);
    assert_one_line_error(code, &err, &["[512, 64]", "400"]);

    // …and a tokenizer with ids past the embedding's rows is refused.
    let dir = copy_model("gpt2");
    let tp = dir.path().join("tokenizer.json");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tp).unwrap()).unwrap();
    t["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": 700, "content": "<|extra|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    std::fs::write(&tp, t.to_string()).unwrap();
    let (code, _, err) = softtune(&["inspect", dir.path().to_str().unwrap()]);
    assert_one_line_error(
        code,
        &err,
        &["tokenizer.json", "ids up to 512", "only 512 rows"],
    );
}

#[test]
fn inspect_offline_not_cached() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_softtune"))
        .args(["inspect", "some-org/not-cached-model", "--offline"])
        .env("HF_HUB_CACHE", cache.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_one_line_error(
        out.status.code().unwrap(),
        &err,
        &["not-cached-model", "offline"],
    );
}

#[test]
fn eval_without_and_with_prompt() {
    let text = fixtures().join("tokenizer_corpus.txt");
    let model = fixtures().join("llama");
    let (code, out, err) = eval(
        model.to_str().unwrap(),
        text.to_str().unwrap(),
        &["--block-size", "64", "--max-blocks", "6", "--batch", "3"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("6 blocks × 64 tokens"), "{out}");
    assert!(out.contains("without prompt: loss"), "{out}");
    assert!(out.contains("tokens/s"), "{out}");

    // A prompt of the wrong width names both widths.
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("p.zip");
    let p = softtune::prompt::SoftPrompt::new(4, 32, vec![0.1; 128]).unwrap();
    softtune::export::write_kobold_zip(
        &zip,
        &p,
        &softtune::export::KoboldMeta {
            name: "t".into(),
            ..Default::default()
        },
        false,
    )
    .unwrap();
    let (code, _, err) = eval(
        model.to_str().unwrap(),
        text.to_str().unwrap(),
        &["--prompt", zip.to_str().unwrap()],
    );
    assert_one_line_error(code, &err, &["32", "64"]);

    // The right width gives a second line with the prompted loss.
    let p = softtune::prompt::SoftPrompt::new(4, 64, vec![0.05; 256]).unwrap();
    softtune::export::write_kobold_zip(&zip, &p, &Default::default(), false).unwrap();
    let (code, out, err) = eval(
        model.to_str().unwrap(),
        text.to_str().unwrap(),
        &[
            "--prompt",
            zip.to_str().unwrap(),
            "--block-size",
            "64",
            "--max-blocks",
            "2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("with prompt (4 soft tokens): loss"), "{out}");
}

/// A model that ships slow tokenizer files (GPT-2's, or a sentencepiece tokenizer.model)
/// instead of tokenizer.json evaluates to the same loss as with its tokenizer.json.
#[test]
fn eval_with_slow_tokenizer_files_matches_tokenizer_json() {
    let text = fixtures().join("tokenizer_corpus.txt");
    let slow = copy_model("gpt2");
    std::fs::remove_file(slow.path().join("tokenizer.json")).unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(
            fixtures().join("slow_tokenizer/plain").join(f),
            slow.path().join(f),
        )
        .unwrap();
    }
    let loss = |model: &Path| {
        let (code, out, err) = eval(
            model.to_str().unwrap(),
            text.to_str().unwrap(),
            &["--block-size", "32", "--max-blocks", "4"],
        );
        assert_eq!(code, 0, "{err}");
        out.lines()
            .find(|l| l.contains("without prompt: loss"))
            .unwrap_or_else(|| panic!("no loss line in {out}"))
            .to_string()
    };
    assert_eq!(loss(slow.path()), loss(&fixtures().join("gpt2")));

    // A model with a sentencepiece tokenizer.model: the same loss as with the tokenizer.json
    // transformers converts from it.
    let spm = fixtures().join("spm_tokenizer");
    let with_model = copy_model("llama");
    let with_json = copy_model("llama");
    std::fs::remove_file(with_model.path().join("tokenizer.json")).unwrap();
    for f in ["tokenizer.model", "tokenizer_config.json"] {
        std::fs::copy(spm.join("llama").join(f), with_model.path().join(f)).unwrap();
    }
    std::fs::copy(
        spm.join("converted/tokenizer.json"),
        with_json.path().join("tokenizer.json"),
    )
    .unwrap();
    assert_eq!(loss(with_model.path()), loss(with_json.path()));

    // An older PEFT adapter (adapter_model.bin) is read for --prompt.
    let (code, out, err) = eval(
        fixtures().join("gpt2").to_str().unwrap(),
        text.to_str().unwrap(),
        &[
            "--prompt",
            fixtures().join("torch_bin/peft_adapter").to_str().unwrap(),
            "--block-size",
            "32",
            "--max-blocks",
            "2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("with prompt (4 soft tokens): loss"), "{out}");
}

#[test]
fn eval_block_too_long_for_context() {
    let (code, _, err) = eval(
        fixtures().join("gpt2").to_str().unwrap(),
        fixtures().join("tokenizer_corpus.txt").to_str().unwrap(),
        &["--block-size", "500"],
    );
    assert_one_line_error(code, &err, &["500", "context length 128"]);
}

#[test]
fn eval_cuda_without_gpu_is_a_clear_error() {
    if softtune::device::probe_cuda(0).is_ok() {
        return; // a GPU machine: covered by scripts/cuda-parity.sh
    }
    let (code, _, err) = eval(
        fixtures().join("gpt2").to_str().unwrap(),
        fixtures().join("tokenizer_corpus.txt").to_str().unwrap(),
        &["--device", "cuda:0"],
    );
    assert_one_line_error(code, &err, &["cuda:0", "--device cpu"]);
}

#[test]
fn parity_command_checks_every_fixture() {
    let (code, out, err) = softtune(&["parity", "--fixtures", fixtures().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    // 48 kernel checks (fast paths against plain Burn or an exact matmul), then every
    // fixture folder (their lines end with the seconds each took).
    let fixture_count = std::fs::read_dir(fixtures())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .join("reference.safetensors")
                .is_file()
        })
        .count();
    assert_eq!(fixture_count, 19);
    assert!(out.contains("kernel check"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with(" ok") || l.contains(" ok  ("))
            .count(),
        48 + fixture_count,
        "{out}"
    );
    assert!(
        out.contains("greedy continuations: 40 of 40 as transformers wrote them"),
        "{out}"
    );

    // A fixture whose reference does not match its model fails the command.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("llama");
    std::fs::create_dir(&bad).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::write(
            bad.join(f),
            std::fs::read(fixtures().join("llama").join(f)).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(
        bad.join("reference.safetensors"),
        std::fs::read(fixtures().join("mistral/reference.safetensors")).unwrap(),
    )
    .unwrap();
    let (code, out, _) = softtune(&["parity", "--fixtures", dir.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.contains("FAIL"), "{out}");

    // A continuation that is not transformers' fails it too, and is named.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("llama");
    std::fs::create_dir(&good).unwrap();
    for f in ["config.json", "model.safetensors", "reference.safetensors"] {
        std::fs::copy(fixtures().join("llama").join(f), good.join(f)).unwrap();
    }
    let mut generation: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("generation.json")).unwrap())
            .unwrap();
    let cases = generation["cases"].as_array_mut().unwrap();
    let case = cases
        .iter_mut()
        .find(|c| c["model"] == "llama" && c["case"] == "short")
        .unwrap();
    let token = &mut case["with_prompt"][5];
    *token = serde_json::json!(token.as_u64().unwrap() + 1);
    let token = &mut case["penalised"]["without_prompt"][3];
    *token = serde_json::json!(token.as_u64().unwrap() + 1);
    std::fs::write(
        dir.path().join("generation.json"),
        serde_json::to_string(&generation).unwrap(),
    )
    .unwrap();
    let (code, out, _) = softtune(&["parity", "--fixtures", dir.path().to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("greedy continuations: 6 of 8 as transformers wrote them; differ: llama short with_prompt (5 of 16 tokens), llama short without_prompt penalised (3 of 16 tokens)"),
        "{out}"
    );
}

/// An EPUB book evaluates like the text it holds: its paragraphs (one `<p>` each, the
/// chapters split over two documents) give the loss of the same paragraphs in a text file,
/// a blank line between them. A DRM-protected book is a one-line error naming it.
#[test]
fn eval_on_an_epub_book_matches_its_text() {
    use std::io::Write;
    let corpus = std::fs::read_to_string(fixtures().join("tokenizer_corpus.txt")).unwrap();
    let paragraphs: Vec<String> = corpus
        .split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .take(40)
        .collect();
    let escape = |p: &str| {
        p.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let chapter = |ps: &[String]| {
        let body: String = ps
            .iter()
            .map(|p| format!("<p>{}</p>\n", escape(p)))
            .collect();
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<html xmlns=\"http://www.w3.org/1999/xhtml\"><head><title>x</title></head><body>\n{body}</body></html>"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, encryption: Option<&str>| {
        let path = dir.path().join(name);
        let mut zw = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        let mut files = vec![
            ("META-INF/container.xml".to_string(), "<container><rootfiles><rootfile full-path=\"content.opf\"/></rootfiles></container>".to_string()),
            ("content.opf".to_string(), "<package><manifest><item id=\"b\" href=\"b.xhtml\" media-type=\"application/xhtml+xml\"/><item id=\"a\" href=\"a.xhtml\" media-type=\"application/xhtml+xml\"/></manifest><spine><itemref idref=\"a\"/><itemref idref=\"b\"/></spine></package>".to_string()),
            ("a.xhtml".to_string(), chapter(&paragraphs[..20])),
            ("b.xhtml".to_string(), chapter(&paragraphs[20..])),
        ];
        if let Some(algorithm) = encryption {
            files.push(("META-INF/encryption.xml".to_string(), format!("<encryption><EncryptedData><EncryptionMethod Algorithm=\"{algorithm}\"/><CipherData><CipherReference URI=\"b.xhtml\"/></CipherData></EncryptedData></encryption>")));
        }
        for (name, text) in files {
            zw.start_file(name, opts).unwrap();
            zw.write_all(text.as_bytes()).unwrap();
        }
        zw.finish().unwrap();
        path
    };
    let book = write("book.epub", None);
    let text = dir.path().join("book.txt");
    std::fs::write(&text, paragraphs.join("\n\n")).unwrap();
    let loss = |file: &Path| {
        let (code, out, err) = eval(
            fixtures().join("gpt2").to_str().unwrap(),
            file.to_str().unwrap(),
            &["--block-size", "32", "--max-blocks", "8"],
        );
        assert_eq!(code, 0, "{err}");
        out.lines()
            .find(|l| l.contains("without prompt: loss"))
            .unwrap_or_else(|| panic!("no loss line in {out}"))
            .to_string()
    };
    assert_eq!(loss(&book), loss(&text));

    let drm = write(
        "drm.epub",
        Some("http://www.w3.org/2001/04/xmlenc#aes128-cbc"),
    );
    let (code, _, err) = eval(
        fixtures().join("gpt2").to_str().unwrap(),
        drm.to_str().unwrap(),
        &["--block-size", "32"],
    );
    assert_one_line_error(code, &err, &["drm.epub", "DRM", "b.xhtml"]);
}

/// `softtune text` prints what training reads: a Word document, an OpenDocument text and
/// the text they were made from read alike (`tests/fixtures/docx/make_docx.py`), the files
/// of a folder in training's order a blank line apart, each file's size on standard error.
/// A file that is not text is a one-line error naming it and what it is.
#[test]
fn text_prints_what_training_reads() {
    let dir = fixtures().join("docx");
    let expected = std::fs::read_to_string(dir.join("book.txt")).unwrap();
    let docx = dir.join("book.docx");
    let (code, out, err) = softtune(&["text", docx.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{expected}\n"));
    assert!(
        err.contains("book.docx: ") && err.contains(" characters") && err.lines().count() == 1,
        "{err}"
    );
    let (code, out, err) = softtune(&["text", dir.to_str().unwrap(), "--glob", "BOOK.*"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{expected}\n\n{expected}\n\n{expected}\n"));
    let order: Vec<&str> = err.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert!(
        order[0].ends_with("book.docx")
            && order[1].ends_with("book.odt")
            && order[2].ends_with("book.txt")
            && err.contains("3 files"),
        "{err}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let pdf = tmp.path().join("novel.txt");
    std::fs::write(&pdf, b"%PDF-1.5\n%\xb5\xb5\n").unwrap();
    let (code, _, err) = softtune(&["text", pdf.to_str().unwrap()]);
    assert_one_line_error(code, &err, &["novel.txt", "a PDF", "pdftotext"]);
    let (code, _, err) = softtune(&["text", tmp.path().to_str().unwrap(), "--glob", "*.epub"]);
    assert_one_line_error(code, &err, &["no files matching \"*.epub\""]);

    // RTF: a story saved by pandoc reads as its text; RTF named .txt, and an RTF file cut
    // short, are errors naming the file and what to do.
    let rtf = fixtures().join("rtf");
    let story = std::fs::read_to_string(rtf.join("story.txt")).unwrap();
    let (code, out, err) = softtune(&["text", rtf.join("story.rtf").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{story}\n"));
    let named_txt = tmp.path().join("story.txt");
    std::fs::copy(rtf.join("story.rtf"), &named_txt).unwrap();
    let (code, _, err) = softtune(&["text", named_txt.to_str().unwrap()]);
    assert_one_line_error(code, &err, &["story.txt", "RTF", "name it .rtf"]);
    // A Scrivener project, named by its folder: its manuscript, as one document.
    let scrivener = fixtures().join("scrivener");
    let novel = std::fs::read_to_string(scrivener.join("Novel.txt")).unwrap();
    let (code, out, err) = softtune(&["text", scrivener.join("Novel.scriv").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{novel}\n"));
    assert!(
        err.contains("Novel.scrivx: ") && err.lines().count() == 1,
        "{err}"
    );
    let cut = tmp.path().join("cut.rtf");
    let bytes = std::fs::read(rtf.join("story.rtf")).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, err) = softtune(&["text", cut.to_str().unwrap()]);
    assert_one_line_error(code, &err, &["cut.rtf", "cut short"]);

    // A work downloaded from the Archive of Our Own as HTML: its chapters only.
    let html = fixtures().join("html");
    let expected = std::fs::read_to_string(html.join("ao3-work.txt")).unwrap();
    let (code, out, err) = softtune(&["text", html.join("ao3-work.html").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{expected}\n"));

    // Text decoded the wrong way before it was saved: its characters put back, and said so.
    let mangled = tmp.path().join("mangled.txt");
    std::fs::write(&mangled, "ï»¿â€œItâ€™s lateâ€\u{9d} â€” cafÃ©.\n").unwrap();
    let (code, out, err) = softtune(&["text", mangled.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "“It’s late” — café.\n");
    assert!(
        err.contains("mangled.txt: 20 characters, 5 characters put back")
            && err.contains("1 file (mangled.txt) had text decoded the wrong way before it was saved (\"â€œ\" for \"“\"): 5 characters put back"),
        "{err}"
    );
}

/// A text file of stories separated by `<|endoftext|>` (a KoboldAI dataset): `softtune
/// text` prints it as it is and counts its stories; `softtune eval` scores it with the
/// model's EOS token between the stories, as training reads them (the fixture model is
/// copied with an EOS id other than its tokenizer's `<|endoftext|>`).
#[test]
fn stories_are_counted_and_scored_with_eos_between() {
    use softtune::model::tokenizer::Tokenizer;
    let corpus = std::fs::read_to_string(fixtures().join("tokenizer_corpus.txt")).unwrap();
    let stories: Vec<String> = corpus
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .take(6)
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|c| format!("{}\n", c.join("\n\n")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("stories.txt");
    std::fs::write(&text, stories.join("<|endoftext|>\n")).unwrap();
    let (code, out, err) = softtune(&["text", text.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, stories.join("<|endoftext|>\n"));
    assert!(
        err.contains("stories.txt: ")
            && err.contains(", 3 stories")
            && err.contains("1 file (stories.txt) holds 3 stories separated by <|endoftext|>"),
        "{err}"
    );

    let model = copy_model("llama");
    let config = model.path().join("config.json");
    let json = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        json.replace("\"eos_token_id\": 0,", "\"eos_token_id\": 2,"),
    )
    .unwrap();
    let tok = Tokenizer::from_file(&model.path().join("tokenizer.json")).unwrap();
    let mut ids = Vec::new();
    for (i, story) in stories.iter().enumerate() {
        if i > 0 {
            ids.push(2);
        }
        ids.extend(tok.encode(story).unwrap());
    }
    let expected = dir.path().join("expected.u32");
    softtune::data::write_token_file(&expected, &ids).unwrap();
    let loss = |file: &Path| {
        let (code, out, err) = eval(
            model.path().to_str().unwrap(),
            file.to_str().unwrap(),
            &["--block-size", "16"],
        );
        assert_eq!(code, 0, "{err}");
        out.lines()
            .find(|l| l.contains("without prompt: loss"))
            .unwrap_or_else(|| panic!("no loss line in {out}"))
            .to_string()
    };
    assert!(ids.len() > 64, "{}", ids.len());
    assert_eq!(loss(&text), loss(&expected));
    // The separator read as text would have been the tokenizer's own `<|endoftext|>`.
    let plain = dir.path().join("plain.u32");
    softtune::data::write_token_file(
        &plain,
        &tok.encode(&stories.join("<|endoftext|>\n")).unwrap(),
    )
    .unwrap();
    assert_ne!(loss(&text), loss(&plain));
}

/// `softtune text` names a hard-wrapped file and its width, and `--unwrap` prints its
/// paragraphs whole, as `dataset.unwrap = true` trains them.
#[test]
fn text_unwraps_hard_wrapped_files() {
    let book = std::fs::read_to_string(fixtures().join("docx/book.txt")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("book.txt");
    std::fs::write(&file, common::hard_wrap(&book, 72)).unwrap();
    let (code, out, err) = softtune(&["text", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{}\n", common::hard_wrap(&book, 72)));
    assert!(
        err.contains("(hard-wrapped at 72 characters)") && err.contains("--unwrap"),
        "{err}"
    );
    let (code, out, err) = softtune(&["text", "--unwrap", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{book}\n"));
    assert!(
        err.contains("(hard-wrapped at 72: lines joined)") && err.lines().count() == 1,
        "{err}"
    );
}

/// `softtune generate` writes transformers' greedy continuation of a text, with a PEFT
/// adapter of the fixture's soft prompt and (with `--compare`) without it, each after the
/// text; a seed writes the same sample again; bad arguments are one-line errors.
#[test]
fn generate_continues_a_text_like_transformers() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("generation.json")).unwrap())
            .unwrap();
    let case = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "llama" && c["case"] == "short")
        .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let model = fixtures().join("llama");
    let tok =
        softtune::model::tokenizer::Tokenizer::from_file(&model.join("tokenizer.json")).unwrap();
    let input = ids(&case["input_ids"]);
    let text = tok.decode(&input).unwrap();
    // The command tokenizes the text: it must give the reference's ids back.
    assert_eq!(tok.encode(&text).unwrap(), input);
    // Written out as decoded, except the first bytes of a character generation stopped
    // inside (the reference with the prompt ends so).
    let continuation_of = |of: &serde_json::Value, key: &str| {
        let mut all = input.clone();
        all.extend(ids(&of[key]));
        tok.decode(&all)
            .unwrap()
            .trim_end_matches('\u{FFFD}')
            .to_string()
    };
    let continuation = |key: &str| continuation_of(case, key);
    assert!(
        tok.decode(&ids(&case["with_prompt"]))
            .unwrap()
            .ends_with('\u{FFFD}')
    );
    let r = softtune::parity::Reference::read(&model.join("reference.safetensors")).unwrap();
    let (shape, data) = r.get("soft_prompt").unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    let p = softtune::prompt::SoftPrompt::new(shape[0], shape[1], data).unwrap();
    let meta = softtune::export::PeftMeta {
        base_model_name_or_path: "llama".into(),
        num_attention_heads: 4,
        num_layers: 2,
        prompt_tuning_init: "RANDOM".into(),
        prompt_tuning_init_text: None,
        tokenizer_name_or_path: None,
    };
    softtune::export::write_peft_adapter(&adapter, &p, &meta).unwrap();
    let m = model.to_str().unwrap();
    let a = adapter.to_str().unwrap();

    // Greedy: transformers' tokens.
    let greedy_args = [
        "generate",
        "--model",
        m,
        "--prompt",
        a,
        "--temperature",
        "0",
        "--tokens",
        "16",
    ];
    let greedy = |extra: &[&str]| softtune(&[&greedy_args[..], extra, &[&text]].concat());
    let (code, out, err) = greedy(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{}\n", continuation("with_prompt")));
    assert!(
        err.contains("(8 soft tokens)")
            && err.contains(&format!(
                "; {} tokens of text; up to 16 new tokens, ",
                input.len()
            ))
            && err.contains("16 new tokens in"),
        "{err}"
    );

    let (code, out, err) = greedy(&["--compare", "--seed", "5"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "--- with the prompt, seed 5 ---\n{}\n\n--- without a prompt, seed 5 ---\n{}\n",
            continuation("with_prompt"),
            continuation("without_prompt")
        )
    );

    // With the repetition penalty over the whole text: transformers' penalised tokens.
    let (code, out, err) = greedy(&[
        "--compare",
        "--seed",
        "5",
        "--repetition-penalty",
        "1.3",
        "--repetition-range",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    let penalised = &case["penalised"];
    assert_ne!(penalised["with_prompt"], case["with_prompt"]);
    assert_eq!(
        out,
        format!(
            "--- with the prompt, seed 5 ---\n{}\n\n--- without a prompt, seed 5 ---\n{}\n",
            continuation_of(penalised, "with_prompt"),
            continuation_of(penalised, "without_prompt")
        )
    );
    assert!(
        err.contains("temperature 0, top-k 40, repetition penalty 1.3 over the whole text, seed 5"),
        "{err}"
    );

    // Sampling: the seed writes the same continuation again; a new text starts without one.
    let sample = |seed: &str| {
        let (code, out, err) = softtune(&[
            "generate",
            "--model",
            m,
            "--prompt",
            a,
            "--tokens",
            "12",
            "--seed",
            seed,
            "--samples",
            "2",
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains("; a new text; up to 12 new tokens, ")
                && err.contains(&format!("seed {seed}")),
            "{err}"
        );
        out
    };
    let first = sample("11");
    assert!(
        first.starts_with("--- sample 1 of 2, with the prompt, seed 11 ---\n"),
        "{first}"
    );
    assert!(
        first.contains("\n--- sample 2 of 2, with the prompt, seed 12 ---\n"),
        "{first}"
    );
    assert_eq!(sample("11"), first);

    // Samples are written together (in batches of --batch), then printed in turn: each is
    // what its seed writes alone, with the prompt and (--compare) without.
    let drawn = |prompt: &[&str], extra: &[&str]| {
        let base = [
            "generate",
            "--model",
            m,
            "--tokens",
            "12",
            "--temperature",
            "1",
        ];
        let (code, out, err) = softtune(&[&base[..], prompt, extra, &[&text]].concat());
        assert_eq!(code, 0, "{err}");
        out
    };
    let mut want = String::new();
    let mut alone = Vec::new();
    for i in 0..3 {
        let seed = (20 + i).to_string();
        for (prompt, label) in [
            (&["--prompt", a][..], "with the prompt"),
            (&[], "without a prompt"),
        ] {
            let out = drawn(prompt, &["--seed", &seed]);
            if !want.is_empty() {
                want.push('\n');
            }
            want += &format!("--- sample {} of 3, {label}, seed {seed} ---\n{out}", i + 1);
            alone.push(out);
        }
    }
    assert!(alone[0] != alone[2] && alone[0] != alone[1], "{alone:?}");
    for batch in ["8", "2"] {
        let together = [
            "--seed",
            "20",
            "--samples",
            "3",
            "--compare",
            "--batch",
            batch,
        ];
        assert_eq!(drawn(&["--prompt", a], &together), want, "--batch {batch}");
    }

    // Interactive: the story grows by what is typed and by each continuation, which is the
    // continuation of the story so far as a plain run writes it.
    let plain_with = |args: &[&str], story: &str| {
        let (code, out, err) = softtune(&[args, &[story]].concat());
        assert_eq!(code, 0, "{err}");
        let rest = out.strip_prefix(story).unwrap_or_else(|| panic!("{out:?}"));
        rest.strip_suffix('\n').unwrap().to_string()
    };
    let plain = |story: &str| plain_with(&greedy_args, story);
    let c0 = plain(&text);
    let c1 = plain(&format!("{text}{c0}"));
    let c2 = plain("Once");
    assert_ne!(c1, c2);
    // After `/set tokens 4` and `/set temp 1` (greedy_args end with --temperature 0
    // --tokens 16): the fifth continuation of a session started with --seed 30.
    let set_args = [&greedy_args[..5], &["--tokens", "4"]].concat();
    let c3 = plain_with(
        &[&set_args[..], &["--temperature", "1", "--seed", "34"]].concat(),
        &format!("Once{c2}"),
    );
    let greedy_c3 = plain_with(
        &[&set_args[..], &["--temperature", "0"]].concat(),
        &format!("Once{c2}"),
    );
    assert_ne!(c3, greedy_c3);
    let saved = dir.path().join("stories/rain.txt");
    let (code, out, err) = softtune_with_input(
        &[&greedy_args[..], &["--interactive", "--seed", "30", &text]].concat(),
        &format!(
            "\n/retry\n/save {}\n/new\nOnce\n/bogus\n/save {}\n/set tokens 4\n/set top-p 0\n/set temp 1\n/set\n\n/quit\nnot read\n",
            saved.display(),
            dir.path().display()
        ),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("{text}{c0}\n{c1}\n{c1}\n{c2}\n{c3}\n"),
        "{err}"
    );
    // /save wrote the story as it stood; a folder is not a file, and says so.
    assert_eq!(
        std::fs::read_to_string(&saved).unwrap(),
        format!("{text}{c0}{c1}")
    );
    assert!(err.contains("is a folder; give a file name"), "{err}");
    assert!(err.contains("/retry writes another continuation"), "{err}");
    assert!(err.contains("(a new story: type its first words"), "{err}");
    assert!(
        err.contains("(no command /bogus; /help lists them)"),
        "{err}"
    );
    // /set shows and changes the settings; a bad value changes nothing and says why.
    assert!(
        err.contains("(now: tokens 4, temperature 0, top-k 40, top-p 1, "),
        "{err}"
    );
    assert!(
        err.contains("(top-p 0: use a number above 0 and at most 1")
            && err.contains("; the setting is unchanged)"),
        "{err}"
    );
    assert!(
        err.contains("(tokens 4, temperature 1, top-k 40, top-p 1, repetition-penalty 1, repetition-range 1024)"),
        "{err}"
    );
    assert_eq!(err.matches("> ").count(), 13, "{err}");
    // Without a text it waits for one; the end of the input ends it.
    let (code, out, err) =
        softtune_with_input(&[&greedy_args[..], &["-i"]].concat(), "/retry\nOnce");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{c2}\n"), "{err}");
    assert!(err.contains("(nothing to retry yet)"), "{err}");

    // Bad arguments and files are one-line errors naming what to change.
    let (code, _, err) = softtune(&["generate", "--model", m, "--temperature=-1", "x"]);
    assert_one_line_error(code, &err, &["--temperature -1"]);
    let (code, _, err) = softtune(&["generate", "--model", m, "--top-p", "0", "x"]);
    assert_one_line_error(code, &err, &["--top-p 0", "at most 1"]);
    let (code, _, err) = softtune(&["generate", "--model", m, "--tokens", "0", "x"]);
    assert_one_line_error(code, &err, &["--tokens"]);
    let wrong = dir.path().join("narrow.zip");
    let p = softtune::prompt::SoftPrompt::new(4, 32, vec![0.1; 128]).unwrap();
    softtune::export::write_kobold_zip(&wrong, &p, &Default::default(), false).unwrap();
    let (code, _, err) = softtune(&[
        "generate",
        "--model",
        m,
        "--prompt",
        wrong.to_str().unwrap(),
        "x",
    ]);
    assert_one_line_error(code, &err, &["narrow.zip", "32", "64"]);
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let (code, _, err) = softtune(&["generate", "--model", m, "--file", empty.to_str().unwrap()]);
    assert_one_line_error(code, &err, &["empty.txt", "no text"]);
    let (code, _, err) = softtune(&["generate", "--model", m, "--compare", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("--prompt"), "{err}");
}

/// `softtune bench --generate`: one row of generation timings (with the key/value cache and
/// reading the whole window) for a shape with random weights; impossible sizes are
/// one-line errors.
#[test]
fn bench_times_generation() {
    let bench = [
        "bench",
        "--shape",
        "smollm-135m",
        "--generate",
        "3",
        "--seq",
        "8",
        "--soft",
        "2",
        "--warmup",
        "0",
    ];
    let (code, out, err) = softtune(&bench);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("ms/step") && lines[0].contains("whole ms/step"));
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&cols[..3], ["smollm-135m", "cpu", "float32"], "{out}");
    // Context, soft, new, texts (one unless told).
    assert_eq!(&cols[4..8], ["8", "2", "3", "1"], "{out}");
    // read ms, ms/step, tokens/s, whole ms/step: positive, and tokens/s is 1000 / ms/step.
    let num = |i: usize| cols[i].parse::<f64>().unwrap();
    assert!((8..12).all(|i| num(i) > 0.0), "{out}");
    assert!((num(10) * num(9) / 1000.0 - 1.0).abs() < 0.05, "{out}");
    assert!(err.contains("3 tokens with the cache"), "{err}");
    assert!(err.contains("3 tokens reading the whole window"), "{err}");
    // Three texts at once: tokens/s counts every text's.
    let (code, out, err) = softtune(&[&bench[..], &["--batch", "3"]].concat());
    assert_eq!(code, 0, "{err}");
    let cols: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(cols[7], "3", "{out}");
    let num = |i: usize| cols[i].parse::<f64>().unwrap();
    assert!((num(10) * num(9) / 3000.0 - 1.0).abs() < 0.05, "{out}");
    assert!(
        err.contains("3 tokens for each of 3 texts with the cache"),
        "{err}"
    );

    let (code, _, err) = softtune(&["bench", "--generate", "1"]);
    assert_one_line_error(code, &err, &["--generate"]);
    let (code, _, err) = softtune(&["bench", "--generate", "40", "--seq", "2020"]);
    assert_one_line_error(code, &err, &["--generate 40", "2048"]);
}
