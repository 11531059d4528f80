//! Typed events the engine emits; the dashboard, the plain progress printer and the run's
//! `events.jsonl` all consume the same stream.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        model: String,
        device: String,
        soft_tokens: usize,
        d_embed: usize,
        tokens_per_sequence: usize,
        batch_size: usize,
        grad_accumulation: usize,
        train_rows: usize,
        eval_rows: usize,
        total_steps: usize,
        start_step: usize,
        /// Steps between sample generations (0: none).
        #[serde(default)]
        sample_every: usize,
    },
    Log {
        message: String,
    },
    /// Held-out loss; `label` is `no_prompt`, `initial`, `step` or `final`.
    Eval {
        step: usize,
        label: String,
        loss: f64,
    },
    Step {
        step: usize,
        total_steps: usize,
        loss: f64,
        grad_norm: f64,
        lr: f64,
        tokens_per_s: f64,
        elapsed_s: f64,
    },
    Checkpoint {
        step: usize,
        checkpoint: String,
        exports: Vec<String>,
    },
    Finished {
        step: usize,
        stopped: bool,
        eval_no_prompt: Option<f64>,
        eval_initial: Option<f64>,
        eval_final: Option<f64>,
        exports: Vec<String>,
    },
    Error {
        message: String,
    },
    /// A short continuation of the sample text with the current soft prompt and without one.
    Sample {
        step: usize,
        prompt: String,
        with_prompt: String,
        without_prompt: String,
    },
    /// Training waits (asked by `softtune pause` or the dashboard's `p`).
    Paused {
        step: usize,
    },
    /// Training goes on after `paused_s` seconds.
    Resumed {
        step: usize,
        paused_s: f64,
    },
}

pub trait EventSink {
    fn emit(&mut self, event: &Event);
}

/// Appends one JSON object per line to `events.jsonl`, flushed after every event.
pub struct JsonlSink {
    file: File,
}

impl JsonlSink {
    /// Opens the log for appending. A last line cut short (a worker killed mid-write) is
    /// ended first, so the first new event starts a line of its own instead of being lost
    /// with that fragment.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .with_context(|| format!("{}: cannot open the event log", path.display()))?;
        if ends_mid_line(&mut file)? {
            writeln!(file)
                .with_context(|| format!("{}: cannot write the event log", path.display()))?;
        }
        Ok(Self { file })
    }
}

/// Whether a non-empty file's last byte is not a newline.
fn ends_mid_line(file: &mut File) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

impl EventSink for JsonlSink {
    fn emit(&mut self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            // A full disk must not kill training; the checkpoint write will report it.
            let _ = writeln!(self.file, "{line}");
            let _ = self.file.flush();
        }
    }
}

/// Plain progress lines (for logs, pipes and headless runs).
pub struct PrintSink;

impl EventSink for PrintSink {
    fn emit(&mut self, e: &Event) {
        println!("{}", plain_text(e));
    }
}

/// The text one event prints as (possibly several lines), for logs and the dashboard.
pub fn plain_text(e: &Event) -> String {
    match e {
        Event::Started {
            model,
            device,
            soft_tokens,
            total_steps,
            train_rows,
            eval_rows,
            start_step,
            tokens_per_sequence,
            ..
        } => format!(
            "started: {model} on {device}, {soft_tokens} soft tokens, {train_rows} training / {eval_rows} held-out sequences of {tokens_per_sequence} tokens, {total_steps} steps{}",
            if *start_step > 0 {
                format!(" (resuming at step {start_step})")
            } else {
                String::new()
            }
        ),
        Event::Log { message } => message.clone(),
        Event::Eval { step, label, loss } => {
            format!(
                "eval [{label}] step {step}: held-out loss {loss:.4} (perplexity {:.2})",
                loss.exp()
            )
        }
        Event::Step {
            step,
            total_steps,
            loss,
            grad_norm,
            lr,
            tokens_per_s,
            ..
        } => format!(
            "step {step}/{total_steps}  loss {loss:.4}  grad-norm {grad_norm:.3}  lr {lr:.3e}  {tokens_per_s:.0} tokens/s"
        ),
        Event::Checkpoint {
            step, checkpoint, ..
        } => {
            format!("checkpoint at step {step}: {checkpoint}")
        }
        Event::Finished {
            step,
            stopped,
            eval_no_prompt,
            eval_initial,
            eval_final,
            exports,
        } => {
            let mut s = format!(
                "{} at step {step}",
                if *stopped { "stopped" } else { "finished" }
            );
            let f = |x: &Option<f64>| {
                x.map_or("n/a".to_string(), |l| {
                    format!("{l:.4} (ppl {:.2})", l.exp())
                })
            };
            s += &format!(
                "\n  held-out loss without prompt: {}\n  with the initial prompt:      {}\n  with the trained prompt:      {}",
                f(eval_no_prompt),
                f(eval_initial),
                f(eval_final)
            );
            if let (Some(a), Some(b)) = (eval_no_prompt, eval_final) {
                s += &format!(
                    "\n  perplexity change vs no prompt: {:+.1}%",
                    ((b - a).exp() - 1.0) * 100.0
                );
            }
            for x in exports {
                s += &format!("\n  wrote {x}");
            }
            s
        }
        Event::Error { message } => format!("error: {message}"),
        Event::Sample {
            step,
            prompt,
            with_prompt,
            without_prompt,
        } => format!(
            "sample at step {step}: {:?}\n  with the soft prompt: {:?}\n  without:              {:?}",
            one_line(prompt),
            one_line(with_prompt),
            one_line(without_prompt)
        ),
        Event::Paused { step } => {
            format!("paused at step {step} (`softtune resume` goes on)")
        }
        Event::Resumed { step, paused_s } => {
            format!("resumed at step {step} after {paused_s:.0} s")
        }
    }
}

/// Newlines and tabs as spaces (sample texts on one log line).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Sends every event to several sinks.
pub struct Fanout(pub Vec<Box<dyn EventSink>>);

impl EventSink for Fanout {
    fn emit(&mut self, e: &Event) {
        for s in &mut self.0 {
            s.emit(e);
        }
    }
}

/// Collects events in memory (tests, the dashboard's history).
#[derive(Default)]
pub struct VecSink(pub Vec<Event>);

impl EventSink for VecSink {
    fn emit(&mut self, e: &Event) {
        self.0.push(e.clone());
    }
}

/// Reads an `events.jsonl` file back.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: line {}: not an event", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appending_after_a_cut_line_starts_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let step = Event::Paused { step: 3 };
        JsonlSink::open(&path).unwrap().emit(&step);
        // A worker killed in the middle of its next line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"event":"step","st"#).unwrap();
        drop(f);
        let again = Event::Resumed {
            step: 3,
            paused_s: 1.5,
        };
        JsonlSink::open(&path).unwrap().emit(&again);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let parsed: Vec<Event> = [lines[0], lines[2]]
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(parsed, vec![step, again]);
        // A file that ends cleanly gets no empty line.
        JsonlSink::open(&path)
            .unwrap()
            .emit(&Event::Paused { step: 4 });
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.lines().all(|l| !l.is_empty()), "{text}");
    }
}
