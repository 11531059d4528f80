//! Following a run's `events.jsonl` while its worker appends to it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::train::events::Event;

/// Reads the events appended to a file since the last call. A line still being written
/// (no newline yet) waits for the next call; lines that are not events (a worker killed
/// mid-write) are counted in `skipped` and left out.
pub struct EventTail {
    path: PathBuf,
    offset: u64,
    pending: Vec<u8>,
    pub skipped: usize,
}

impl EventTail {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            pending: Vec::new(),
            skipped: 0,
        }
    }

    /// The complete events that arrived since the last call (all of them the first time).
    /// A missing file has no events yet.
    pub fn poll(&mut self) -> Result<Vec<Event>> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("{}: cannot read", self.path.display()));
            }
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Replaced or truncated: start over.
            self.offset = 0;
            self.pending.clear();
        }
        f.seek(SeekFrom::Start(self.offset))
            .and_then(|_| f.read_to_end(&mut self.pending))
            .map(|n| self.offset += n as u64)
            .with_context(|| format!("{}: cannot read", self.path.display()))?;
        let mut out = Vec::new();
        while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<Event>(text) {
                Ok(e) => out.push(e),
                Err(_) => self.skipped += 1,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn partial_lines_wait_for_their_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut tail = EventTail::new(&path);
        assert!(tail.poll().unwrap().is_empty(), "no file yet");
        let line = serde_json::to_string(&Event::Log {
            message: "hi".into(),
        })
        .unwrap();
        let mut f = File::create(&path).unwrap();
        write!(f, "{line}\n{}", &line[..5]).unwrap();
        assert_eq!(tail.poll().unwrap().len(), 1);
        assert!(tail.poll().unwrap().is_empty());
        write!(f, "{}\nnot json\n", &line[5..]).unwrap();
        assert_eq!(
            tail.poll().unwrap(),
            vec![Event::Log {
                message: "hi".into()
            }]
        );
        assert_eq!(tail.skipped, 1);
    }
}
