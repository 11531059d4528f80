//! Starting a detached run: everything that can be checked is checked here, in the
//! launching process, so input errors are reported at once; then the worker starts in a
//! new session (no controlling terminal, SIGHUP ignored) and the launcher returns.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};

use super::state::{RunState, Status, hostname};
use super::{CONFIG_FILE, LOG_FILE, RunInfo, format_utc, id_stamp, now_secs, runs_dir};
use crate::config::{RunConfig, ValidConfig};
use crate::model::source::{self, HubOptions};
use crate::train;
use crate::train::checkpoint::Checkpoint;
use crate::train::events::{Event, EventSink, JsonlSink};

/// A started run.
#[derive(Debug, Clone)]
pub struct Launched {
    pub id: String,
    /// The run folder.
    pub dir: PathBuf,
    /// The worker's process id.
    pub pid: u32,
    /// The plan's figures when the run was planned here; `None` when the worker downloads
    /// the model first and plans then.
    pub planned: Option<Planned>,
    /// Where the KoboldAI export will be written.
    pub kobold: PathBuf,
}

/// Validates `config`, plans it (unless the model still has to be downloaded: the worker
/// does that), creates the run folder (`run_dir`, or one under [`runs_dir`]) and starts
/// the worker.
pub fn launch(config: &Path, run_dir: Option<&Path>) -> Result<Launched> {
    if !cfg!(unix) {
        bail!("detached runs need a Unix system; add --foreground to train in this terminal");
    }
    let config = std::path::absolute(config)
        .with_context(|| format!("{}: cannot resolve the path", config.display()))?;
    let cfg = RunConfig::from_file(&config)?;
    let valid = cfg
        .validate()
        .map_err(|e| anyhow!("{}: {e:#}", config.display()))?;

    let plan_here = check_before_planning(&valid)?;
    let folder = RunFolder::create(&valid.stem, now_secs(), run_dir)?;
    let result = (|| -> Result<Launched> {
        let dir = &folder.dir;
        let planned = plan_if(plan_here, &valid, dir)?;
        write_config(dir, &folder.id, &config.display().to_string(), None, &cfg)?;
        let mut st = RunState::new(&folder.id, now_secs());
        st.source = Some(config.display().to_string());
        st.total_steps = planned.as_ref().map(|p| p.steps);
        st.write(dir)?;
        let pid = spawn_worker(dir)?;
        Ok(Launched {
            id: folder.id.clone(),
            dir: dir.clone(),
            pid,
            planned,
            kobold: valid.folder.join(format!("{}.zip", valid.stem)),
        })
    })();
    if result.is_err() {
        folder.remove();
    }
    result
}

/// Whether the run can be planned here: a model that is local or already cached is
/// resolved and the dataset tokenized in the launching process, so the worker starts from
/// the cache. A model still to be downloaded (possibly many GB) is downloaded by the
/// worker, which survives a dropped connection; only what needs no weights is checked here.
fn check_before_planning(valid: &ValidConfig) -> Result<bool> {
    let mut hub = HubOptions::from_env();
    hub.revision = valid.revision.clone();
    let model = valid.model.as_str();
    let plan_here = hub.offline
        || Path::new(model).exists()
        || model.starts_with('~')
        || source::resolve(
            model,
            &HubOptions {
                offline: true,
                ..hub.clone()
            },
        )
        .is_ok();
    if !plan_here {
        source::resolve_config_only(model, &hub)?;
        crate::data::dataset::scan(&valid.dataset, &valid.glob)?;
    }
    Ok(plan_here)
}

/// What planning a run in the launching process found.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Optimizer steps.
    pub steps: usize,
    /// Training sequences.
    pub rows: usize,
    /// The plan's notes on the dataset ([`train::Plan::notes`]), also written to the run's
    /// event log: the worker, planning again from the token cache, does not find them.
    pub notes: Vec<String>,
}

/// Plans the run into `dir` when [`check_before_planning`] said so.
fn plan_if(plan_here: bool, valid: &ValidConfig, dir: &Path) -> Result<Option<Planned>> {
    if !plan_here {
        return Ok(None);
    }
    let plan = train::plan(valid, dir)?;
    if !plan.notes.is_empty() {
        let mut log = JsonlSink::open(&dir.join(super::EVENTS_FILE))?;
        for note in &plan.notes {
            log.emit(&Event::Log {
                message: format!("dataset: {note}"),
            });
        }
    }
    Ok(Some(Planned {
        steps: plan.total_steps,
        rows: plan.rows.train.len(),
        notes: plan.notes,
    }))
}

/// Writes the run folder's `config.toml`: the configuration the worker trains.
fn write_config(
    dir: &Path,
    id: &str,
    source: &str,
    resumed: Option<&str>,
    cfg: &RunConfig,
) -> Result<()> {
    let text = format!(
        "# softtune run {id}: the configuration as validated from {source}, with absolute paths.\n\
         # The worker trains this copy; editing it changes nothing in a running run.\n{}\n{}",
        resumed.map_or(String::new(), |r| format!("# {r}\n")),
        cfg.to_toml()?
    );
    crate::export::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// A stopped or failed run started again (`softtune resume`).
#[derive(Debug, Clone)]
pub struct Resumed {
    /// The new worker's process id.
    pub pid: u32,
    /// The checkpoint's step it goes on from; `None`: it had none and starts over.
    pub from_step: Option<usize>,
    /// The run's optimizer steps, when planned here.
    pub total_steps: Option<usize>,
}

/// Starts a stopped or failed run's worker again, in the same run folder: from the run's
/// checkpoint when it has one (the same prompt, optimizer state and data order an
/// uninterrupted run would have: `continue_from` in its `config.toml`), else from the
/// start (a worker that died before its first checkpoint, e.g. while downloading). Its
/// events are appended to the same `events.jsonl`. Everything is checked here first, as
/// for a new run.
pub fn resume(info: &RunInfo) -> Result<Resumed> {
    if !cfg!(unix) {
        bail!("detached runs need a Unix system");
    }
    let id = &info.id;
    let old = &info.state;
    match old.state {
        Status::Stopped | Status::Failed => {}
        Status::Running => bail!("run {id} is running; `softtune resume {id}` only ends a pause"),
        Status::Finished => bail!(
            "run {id} has finished all its steps: nothing to resume. To train its prompt further, \
             start a new run with continue_from = \"{}\"",
            old.exports
                .iter()
                .find(|e| e.ends_with(".zip"))
                .map_or("its .zip", String::as_str)
        ),
    }
    if let Some(host) = &old.host
        && Some(host) != hostname().as_ref()
    {
        bail!("run {id} ran on {host}; resume it there");
    }
    let dir = &info.dir;
    if super::lock_worker(dir)?.is_none() {
        bail!(
            "run {id}: its worker{} still holds the run folder; `softtune stop {id}` or wait for it to end",
            old.pid.map_or(String::new(), |p| format!(" (pid {p})"))
        );
    }
    let path = dir.join(CONFIG_FILE);
    let mut cfg = RunConfig::from_file(&path)
        .with_context(|| format!("run {id}: its configuration cannot be read"))?;
    let checkpoint = train::checkpoint_path(dir);
    let from_step = if checkpoint.is_file() {
        let ck = Checkpoint::load(&checkpoint).with_context(|| {
            format!(
                "run {id}: its checkpoint is damaged; start a new run instead (`softtune train --config {}`)",
                old.source.as_deref().unwrap_or("FILE")
            )
        })?;
        cfg.continue_from = Some(checkpoint.clone());
        Some(ck.step)
    } else {
        None
    };
    let valid = cfg
        .validate()
        .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    let plan_here = check_before_planning(&valid)?;
    let planned =
        plan_if(plan_here, &valid, dir).with_context(|| format!("run {id} cannot resume"))?;
    let note = match from_step {
        Some(s) => format!(
            "Resumed {} from its checkpoint at step {s}.",
            format_utc(now_secs())
        ),
        None => format!(
            "Started again {} (no checkpoint yet).",
            format_utc(now_secs())
        ),
    };
    let source = old.source.clone().unwrap_or_else(|| "?".into());
    write_config(dir, id, &source, Some(&note), &cfg)?;
    let mut st = old.clone();
    st.state = Status::Running;
    st.pid = None;
    st.host = None;
    st.message = None;
    st.paused = false;
    st.updated = now_secs();
    st.step = from_step.unwrap_or(0);
    if let Some(Planned { steps, .. }) = planned {
        st.total_steps = Some(steps);
    }
    st.write(dir)?;
    match spawn_worker(dir) {
        Ok(pid) => Ok(Resumed {
            pid,
            from_step,
            total_steps: planned.as_ref().map(|p| p.steps),
        }),
        Err(e) => {
            // Leave the run as it was, so `runs` does not show a worker that never came.
            let _ = old.write(dir);
            Err(e)
        }
    }
}

/// A run folder this launch created (removed again if the launch fails).
struct RunFolder {
    id: String,
    dir: PathBuf,
    /// The entry under the runs folder: the folder itself, or a link to `--run-dir`.
    entry: PathBuf,
    /// Whether `dir` is the user's `--run-dir` (kept on failure).
    explicit: bool,
}

impl RunFolder {
    fn create(stem: &str, now: u64, explicit: Option<&Path>) -> Result<Self> {
        let runs = runs_dir()?;
        fs::create_dir_all(&runs).map_err(|e| {
            anyhow!(
                "{}: cannot create the runs folder ({e}); set SOFTTUNE_DATA_DIR to a writable folder",
                runs.display()
            )
        })?;
        let explicit = match explicit {
            Some(d) => {
                let d = std::path::absolute(d)
                    .with_context(|| format!("{}: cannot resolve the path", d.display()))?;
                fs::create_dir_all(&d).map_err(|e| {
                    anyhow!(
                        "--run-dir {}: cannot create it ({e}); choose another folder",
                        d.display()
                    )
                })?;
                if d.join(super::STATE_FILE).is_file()
                    && let Ok(st) = super::state::load_checked(&d)
                    && st.state == Status::Running
                {
                    bail!(
                        "--run-dir {}: run {} is still running there; stop it (softtune stop {}) or choose another folder",
                        d.display(),
                        st.id,
                        st.id
                    );
                }
                Some(d)
            }
            None => None,
        };
        let base = format!("{stem}-{}", id_stamp(now));
        for n in 1..1000 {
            let id = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let entry = runs.join(&id);
            let made = match &explicit {
                None => fs::create_dir(&entry),
                Some(d) => link(d, &entry),
            };
            match made {
                Ok(()) => {
                    return Ok(Self {
                        id,
                        dir: explicit.clone().unwrap_or_else(|| entry.clone()),
                        entry,
                        explicit: explicit.is_some(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => bail!(
                    "{}: cannot create the run folder ({e}); set SOFTTUNE_DATA_DIR to a writable folder",
                    entry.display()
                ),
            }
        }
        bail!(
            "{}: too many runs named {base}; remove old ones",
            runs.display()
        )
    }

    fn remove(&self) {
        if self.explicit {
            let _ = fs::remove_file(&self.entry);
        } else {
            let _ = fs::remove_dir_all(&self.entry);
        }
    }
}

#[cfg(unix)]
fn link(target: &Path, entry: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, entry)
}

#[cfg(not(unix))]
fn link(_target: &Path, _entry: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("--run-dir needs a Unix system"))
}

/// Starts `softtune worker DIR` in a new session, its output appended to `worker.log`.
fn spawn_worker(dir: &Path) -> Result<u32> {
    let exe =
        std::env::current_exe().context("cannot find the softtune binary to start the worker")?;
    let log_path = dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("{}: cannot create the worker log", log_path.display()))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("worker")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (setsid, signal).
        unsafe {
            cmd.pre_exec(|| {
                // A new session: no controlling terminal, so closing it sends no SIGHUP.
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // Until the worker installs its own handlers.
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                Ok(())
            });
        }
    }
    let child = cmd.spawn().with_context(|| {
        format!(
            "cannot start the worker ({} worker {})",
            exe.display(),
            dir.display()
        )
    })?;
    // Not waited for: the worker outlives this process.
    Ok(child.id())
}
