//! The detached worker (`softtune worker RUN_DIR`): trains the run folder's configuration,
//! appending to `events.jsonl`, printing plain lines to its log (stdout), and keeping
//! `state.json` current with a heartbeat. It has no terminal: SIGHUP is ignored; SIGINT and
//! SIGTERM stop the run gracefully after the current step (checkpoint + exports).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

use super::state::{HEARTBEAT_SECS, RunState, Status, hostname};
use super::{CONFIG_FILE, EVENTS_FILE, now_secs, outcome_hints};
use crate::config::RunConfig;
use crate::train::events::{Event, EventSink, Fanout, JsonlSink, PrintSink};
use crate::train::{self, Control, Outcome};

/// The state shared by the training thread and the heartbeat.
#[derive(Clone)]
struct Shared {
    dir: PathBuf,
    state: Arc<Mutex<RunState>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` and writes `state.json` (under the lock, so writes never interleave).
    fn update(&self, write: bool, f: impl FnOnce(&mut RunState)) {
        let mut st = self.lock();
        f(&mut st);
        if write {
            st.updated = now_secs();
            if let Err(e) = st.write(&self.dir) {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

/// Keeps `state.json` in step with the events (progress, checkpoints, exports); writes at
/// most about once a second for steps, at once for checkpoints.
struct StateSink {
    shared: Shared,
    last_write: Instant,
}

impl EventSink for StateSink {
    fn emit(&mut self, e: &Event) {
        let write = match e {
            Event::Started { .. } | Event::Checkpoint { .. } => true,
            Event::Step { .. } => self.last_write.elapsed() >= Duration::from_secs(1),
            Event::Finished { .. } | Event::Error { .. } => false,
            Event::Paused { .. } | Event::Resumed { .. } => true,
            Event::Log { .. } | Event::Eval { .. } | Event::Sample { .. } => return,
        };
        self.shared.update(write, |st| match e {
            Event::Started {
                total_steps,
                start_step,
                ..
            } => {
                st.total_steps = Some(*total_steps);
                st.step = *start_step;
            }
            Event::Step {
                step,
                total_steps,
                loss,
                ..
            } => {
                st.step = *step;
                st.total_steps = Some(*total_steps);
                st.loss = Some(*loss);
            }
            Event::Checkpoint {
                step,
                checkpoint,
                exports,
            } => {
                st.step = *step;
                st.checkpoint = Some(checkpoint.clone());
                st.exports = exports.clone();
            }
            Event::Finished { step, exports, .. } => {
                st.step = *step;
                st.exports = exports.clone();
            }
            Event::Error { message } => st.message = Some(message.clone()),
            Event::Paused { .. } => st.paused = true,
            Event::Resumed { .. } => st.paused = false,
            Event::Log { .. } | Event::Eval { .. } | Event::Sample { .. } => {}
        });
        if write {
            self.last_write = Instant::now();
        }
    }
}

/// Pause and resume requests (SIGUSR1 / SIGUSR2), applied to the engine's pause flag by the
/// heartbeat thread.
#[derive(Clone, Default)]
struct PauseRequests {
    pause: Arc<AtomicBool>,
    resume: Arc<AtomicBool>,
}

impl PauseRequests {
    fn apply(&self, flag: &AtomicBool) {
        if self.pause.swap(false, Ordering::SeqCst) {
            flag.store(true, Ordering::SeqCst);
        }
        if self.resume.swap(false, Ordering::SeqCst) {
            flag.store(false, Ordering::SeqCst);
        }
    }
}

/// Updates `updated` in `state.json` every [`HEARTBEAT_SECS`] until `done` is set, and
/// applies pause/resume requests.
fn heartbeat(
    shared: Shared,
    done: Arc<AtomicBool>,
    requests: PauseRequests,
    pause: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let tick = Duration::from_millis(100);
        let mut last = Instant::now();
        while !done.load(Ordering::SeqCst) {
            std::thread::sleep(tick);
            requests.apply(&pause);
            if last.elapsed() >= Duration::from_secs(HEARTBEAT_SECS) {
                shared.update(true, |_| {});
                last = Instant::now();
            }
        }
    })
}

/// Ignores SIGHUP, turns SIGINT/SIGTERM into the engine's stop flag and SIGUSR1/SIGUSR2
/// into pause/resume requests.
fn install_signals(stop: &Arc<AtomicBool>, requests: &PauseRequests) -> Result<()> {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
        unsafe {
            libc::signal(SIGHUP, libc::SIG_IGN);
        }
        // A second signal changes nothing: the checkpoint after the current step is what
        // a stop is for (SIGKILL ends the worker at once, and the run is then marked failed).
        for sig in [SIGINT, SIGTERM] {
            signal_hook::flag::register(sig, stop.clone())?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, requests.pause.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGUSR2, requests.resume.clone())?;
    }
    #[cfg(not(unix))]
    {
        signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    }
    Ok(())
}

/// The worker's body. Returns the process exit code: 0 finished, 130 stopped, 1 failed.
pub fn main(dir: &Path) -> u8 {
    // First of all: a SIGTERM from here on stops the run gracefully, a SIGHUP does nothing.
    let control = Control::default();
    let requests = PauseRequests::default();
    let signals = install_signals(&control.stop, &requests);
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Held until this process ends. A second worker on the same folder (two `softtune
    // resume` at once) leaves at once, touching nothing.
    let _lock = match super::lock_worker(&dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            println!("run {id}: another worker already trains it; this one ends");
            return 1;
        }
        Err(e) => {
            println!("run {id}: {e:#}");
            return 1;
        }
    };
    let mut st = RunState::read(&dir).unwrap_or_else(|_| RunState::new(&id, now_secs()));
    st.state = Status::Running;
    st.pid = Some(std::process::id());
    st.host = hostname();
    st.message = None;
    let shared = Shared {
        dir: dir.clone(),
        state: Arc::new(Mutex::new(st)),
    };
    shared.update(true, |_| {});
    println!(
        "worker {} for run {id} started {}",
        std::process::id(),
        super::format_utc(now_secs())
    );

    let done = Arc::new(AtomicBool::new(false));
    let beat = heartbeat(
        shared.clone(),
        done.clone(),
        requests,
        control.pause.clone(),
    );

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        body(&dir, &shared, &control, signals)
    }))
    .unwrap_or_else(|panic| {
        Err(anyhow!(
            "the worker crashed: {}",
            train::panic_text(panic.as_ref())
        ))
    });

    done.store(true, Ordering::SeqCst);
    let _ = beat.join();
    let (status, code) = match &result {
        Ok(out) if out.stopped => (Status::Stopped, 130),
        Ok(_) => (Status::Finished, 0),
        Err(_) => (Status::Failed, 1),
    };
    shared.update(true, |st| {
        st.state = status;
        st.paused = false;
        match &result {
            Ok(out) => {
                st.step = out.step;
                st.exports = out
                    .exports
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                st.message = None;
            }
            Err(e) => st.message = Some(format!("{e:#}")),
        }
    });
    match &result {
        Ok(_) => println!("run {id} {status}"),
        Err(e) => println!("run {id} failed: {e:#}"),
    }
    code
}

/// Loads, validates and plans the run folder's configuration and trains it.
fn body(dir: &Path, shared: &Shared, control: &Control, signals: Result<()>) -> Result<Outcome> {
    let mut jsonl = JsonlSink::open(&dir.join(EVENTS_FILE))?;
    let prepared = (|| -> Result<_> {
        signals?;
        let path = dir.join(CONFIG_FILE);
        let cfg = RunConfig::from_file(&path)?
            .validate()
            .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        train::plan(&cfg, dir)
    })();
    let plan = match prepared {
        Ok(p) => p,
        Err(e) => {
            // The engine reports its own errors as events; these happened before it.
            let ev = Event::Error {
                message: format!("{e:#}"),
            };
            jsonl.emit(&ev);
            PrintSink.emit(&ev);
            return Err(e);
        }
    };
    let mut sink = Fanout(vec![
        Box::new(jsonl),
        Box::new(PrintSink),
        Box::new(StateSink {
            shared: shared.clone(),
            last_write: Instant::now(),
        }),
    ]);
    let out = train::run(&plan, control, &mut sink)?;
    let id = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    for line in outcome_hints(&plan, &out, id.as_deref()) {
        println!("{line}");
    }
    Ok(out)
}
