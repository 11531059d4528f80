//! The dashboard drawn from a recorded `events.jsonl` (a real CPU run of the gpt2 fixture on
//! the demo's Ruth, paths anonymised) into ratatui's TestBackend and snapshotted: a run in
//! progress, paused, finished, failed, the overlays and the small-terminal message; and the
//! keys, which turn into requests to the worker.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use softtune::runs::Request;
use softtune::runs::state::{RunState, Status};
use softtune::train::events::{Event, read_events};
use softtune::tui::dashboard::{DashAction, GpuUse};
use softtune::tui::{Dashboard, RunView, Theme};

const ID: &str = "ruth-v1-20261126-093000";

fn recorded() -> Vec<Event> {
    read_events(std::path::Path::new(
        "tests/fixtures/events/ruth-gpt2-cpu.jsonl",
    ))
    .unwrap()
}

/// The first `n` events (the run as it looked then).
fn upto(n: usize) -> Vec<Event> {
    recorded().into_iter().take(n).collect()
}

fn state(status: Status) -> RunState {
    let mut st = RunState::new(ID, 1_795_685_400);
    st.state = status;
    st.pid = Some(4242);
    st
}

fn dash(events: &[Event], status: Status, gpu: GpuUse) -> Dashboard {
    Dashboard::new(
        ID,
        state(status),
        RunView::from_events(events),
        gpu,
        Theme::default(),
    )
}

fn screen(d: &Dashboard, w: u16, h: u16) -> TestBackend {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| d.draw(f)).unwrap();
    t.backend().clone()
}

fn text(b: &TestBackend) -> String {
    let buf = b.buffer();
    let mut s = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            s.push_str(buf[(x, y)].symbol());
        }
        s.push('\n');
    }
    s
}

fn key(d: &mut Dashboard, c: char) -> DashAction {
    d.handle_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

fn gpu() -> GpuUse {
    GpuUse::Read {
        util: 87,
        used: 21 << 30,
        total: 80 << 30,
    }
}

#[test]
fn a_run_in_progress() {
    // Up to step 22: two evaluations, two checkpoints, the sample of step 20.
    let events = upto(32);
    let d = dash(&events, Status::Running, gpu());
    let s = screen(&d, 80, 24);
    let t = text(&s);
    assert!(t.contains("step 22/39"), "{t}");
    assert!(t.contains("ETA"), "{t}");
    assert!(t.contains("sample at step 20"), "{t}");
    assert!(t.contains("87% · 21.0/80 GiB"), "{t}");
    assert!(t.contains("q detach · s stop · p pause"), "{t}");
    insta::assert_snapshot!("in_progress_80x24", s);
}

#[test]
fn a_large_terminal_gets_a_larger_chart_and_log() {
    let events = upto(32);
    let d = dash(
        &events,
        Status::Running,
        GpuUse::NotAvailable("n/a (cpu run)".into()),
    );
    insta::assert_snapshot!("in_progress_120x40", screen(&d, 120, 40));
}

#[test]
fn paused_shows_in_the_title_progress_and_keys() {
    let mut events = upto(32);
    events.push(Event::Paused { step: 22 });
    let d = dash(&events, Status::Running, gpu());
    let s = screen(&d, 80, 24);
    let t = text(&s);
    assert!(t.contains(" paused "), "{t}");
    assert!(t.contains("p resume"), "{t}");
    assert!(!t.contains("ETA"), "no ETA while paused: {t}");
    insta::assert_snapshot!("paused", s);
}

#[test]
fn a_finished_run_shows_its_whole_history() {
    let events = recorded();
    let d = dash(
        &events,
        Status::Finished,
        GpuUse::NotAvailable("n/a (cpu run)".into()),
    );
    let s = screen(&d, 100, 30);
    let t = text(&s);
    assert!(t.contains("step 39/39 100%"), "{t}");
    assert!(t.contains("sample at step 39"), "{t}");
    assert!(t.contains("q quit"), "{t}");
    assert!(t.contains("wrote ~/softprompts/ruth-v1.zip"), "{t}");
    insta::assert_snapshot!("finished_100x30", s);
}

#[test]
fn a_failed_run_says_why() {
    let mut events = upto(20);
    let msg = "the loss is NaN: the computation overflowed (when training, lower training.lr)";
    events.push(Event::Error {
        message: msg.into(),
    });
    let mut st = state(Status::Failed);
    st.message = Some(msg.into());
    let d = Dashboard::new(
        ID,
        st,
        RunView::from_events(&events),
        GpuUse::NotAvailable("n/a (cpu run)".into()),
        Theme::default(),
    );
    let s = screen(&d, 80, 24);
    let t = text(&s);
    assert!(t.contains(" failed "), "{t}");
    assert!(t.contains("error: the loss is NaN"), "{t}");
    insta::assert_snapshot!("failed", s);
}

#[test]
fn before_the_first_event() {
    let d = dash(&[], Status::Running, GpuUse::NotAvailable("n/a".into()));
    let t = text(&screen(&d, 80, 24));
    assert!(t.contains("waiting for the worker"), "{t}");
    assert!(t.contains("the chart starts with the first step"), "{t}");
}

#[test]
fn too_small_and_overlays() {
    let events = upto(32);
    let mut d = dash(&events, Status::Running, gpu());
    insta::assert_snapshot!("too_small", screen(&d, 70, 20));
    assert_eq!(key(&mut d, '?'), DashAction::Continue);
    insta::assert_snapshot!("help", screen(&d, 80, 24));
    assert_eq!(
        key(&mut d, 'q'),
        DashAction::Continue,
        "q closes the help first"
    );
    assert_eq!(key(&mut d, 's'), DashAction::Continue);
    insta::assert_snapshot!("confirm_stop", screen(&d, 80, 24));
}

#[test]
fn keys_become_requests() {
    let events = upto(32);
    let mut d = dash(&events, Status::Running, gpu());
    assert_eq!(key(&mut d, 'p'), DashAction::Send(Request::Pause));
    assert_eq!(key(&mut d, 's'), DashAction::Continue, "s asks first");
    assert_eq!(
        key(&mut d, 'n'),
        DashAction::Continue,
        "anything but y keeps training"
    );
    assert!(text(&screen(&d, 80, 24)).contains("not stopped"));
    key(&mut d, 's');
    assert_eq!(key(&mut d, 'y'), DashAction::Send(Request::Stop));
    assert_eq!(key(&mut d, 'q'), DashAction::Detach);
    assert_eq!(
        d.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        DashAction::Detach
    );

    // Paused (the worker said so): p resumes.
    d.view.apply(&Event::Paused { step: 22 });
    assert_eq!(key(&mut d, 'p'), DashAction::Send(Request::Resume));

    // An ended run takes no requests.
    let mut done = dash(&recorded(), Status::Finished, gpu());
    assert_eq!(key(&mut done, 'p'), DashAction::Continue);
    assert_eq!(key(&mut done, 's'), DashAction::Continue);
    assert!(text(&screen(&done, 80, 24)).contains("the run is finished"));
    assert_eq!(
        key(&mut done, 'r'),
        DashAction::Continue,
        "nothing to resume"
    );
    assert_eq!(key(&mut done, 'q'), DashAction::Detach);
    assert_eq!(
        key(&mut d, 'r'),
        DashAction::Continue,
        "a running run goes on"
    );

    // A stopped or failed run: r starts it again from its checkpoint.
    let mut stopped = upto(32);
    stopped.push(Event::Finished {
        step: 22,
        stopped: true,
        eval_no_prompt: None,
        eval_initial: None,
        eval_final: None,
        exports: vec![],
    });
    for status in [Status::Stopped, Status::Failed] {
        let mut d = dash(&stopped, status, gpu());
        let t = text(&screen(&d, 100, 30));
        assert!(t.contains("r resume"), "{t}");
        assert_eq!(key(&mut d, 'r'), DashAction::Restart);
    }
    let d = dash(&stopped, Status::Stopped, gpu());
    let t = text(&screen(&d, 100, 30));
    assert!(
        t.contains("stopped at step 22; r goes on from its checkpoint"),
        "{t}"
    );
}

#[test]
fn every_theme_draws() {
    let events = upto(32);
    for name in ["default", "light", "high-contrast", "mono"] {
        let th = Theme::load(name, None).unwrap();
        let d = Dashboard::new(
            ID,
            state(Status::Running),
            RunView::from_events(&events),
            gpu(),
            th.clone(),
        );
        let s = screen(&d, 80, 24);
        // The status badge uses the theme's ok style, reversed.
        let buf = s.buffer();
        let cell = &buf[(80 - 3, 0)];
        assert_eq!(
            cell.fg,
            th.ok.fg.unwrap_or(ratatui::style::Color::Reset),
            "{name}"
        );
    }
}
