//! The service runtime: the supervisor loop every MirageSDK service runs.
//!
//! A service starts its roles from [`RoleSpec`]s (name, command line, the
//! descriptors it gets, its first message, whether it may be restarted) and
//! hands them to a [`Runtime`] with its [`Service`]: typed routing handlers
//! and its policy. The runtime does the rest, the same for every service:
//! - a role's messages are read in bounded bursts, every role each round, so
//!   none can starve another or the signal pipe;
//! - nothing is ever sent with a blocking call: lossy traffic (frames) is
//!   dropped when a role's socket is full, everything else waits in a
//!   bounded [`Outbox`], and a role that leaves it full does not read;
//! - role logs are relayed under the role's name, rate-limited
//!   ([`LineLimiter`]);
//! - a role that exits, closes its channel, sends what its service refuses or
//!   stops reading is at fault: a restartable one (the engine) is killed and
//!   started again with back-off, after what it left in its channel was
//!   handled (nothing it sent before dying is lost); any other ends the
//!   service; a service may also start any role again on purpose
//!   ([`Ctx::restart`]: new descriptors for it), which is no fault;
//! - a restart cannot mend a role's setup: a restartable role that failed
//!   before its sandbox was in force ([`crate::role::EXIT_SETUP_FAILED`])
//!   twice in a row with the same last ERROR line, or that said it cannot
//!   run ([`crate::role::EXIT_CANNOT_RUN`]), ends the service instead;
//! - SIGTERM/SIGINT/SIGHUP start the service's orderly stop, which ends
//!   within the stop grace whatever the roles do;
//! - a restarted role gets its descriptors again from the service
//!   ([`RoleStart::fds`]: duplicates of what only the privileged start could
//!   open), so a role holding a listening socket can be restartable too;
//! - two roles may talk over a direct channel ([`Runtime::link`]) where a
//!   hop through the supervisor would cost too much; such a pair lives and
//!   restarts together.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{ChildStderr, ExitCode};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::channel::{Channel, Outbox, OutboxError, wait, wait_readable};
use crate::log::{LineLimiter, LineVerdict};
use crate::spawn::{PendingRole, RoleProcess};

/// A role's index in the list given to [`Runtime::new`].
pub type RoleId = usize;

/// Messages read from one role in one round.
pub const BURST: usize = 64;
/// Messages for one role that its socket could not take yet; a role that
/// leaves this many unread does not read its channel.
pub const OUTBOX_MAX: usize = 64;
/// Messages a dead role may still have left in its channel, read after it
/// exited and before its exit is acted on.
pub const DRAIN_MAX: usize = 1024;
/// Restart back-off: doubles from the first value to the cap, and resets
/// once a role has lived for `STABLE`.
const RESTART_FIRST: Duration = Duration::from_millis(200);
const RESTART_MAX: Duration = Duration::from_secs(30);
const STABLE: Duration = Duration::from_secs(60);
/// How long a stop waits for the service's last work (a release, the last
/// intents), whatever the roles do.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// What happens when a role ends or misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// The service ends (with failure): nothing could replace the role (it
    /// holds descriptors only the privileged start could open).
    Never,
    /// Killed and started again with back-off ([`Service::restart`] says
    /// how): the role that faces hostile input.
    WithBackoff,
}

/// How to start one role.
pub struct RoleSpec<'a> {
    /// Its name in logs (`[engine] ...`) and errors.
    pub name: &'static str,
    /// What to execute: `None` re-executes this binary (`/proc/self/exe`).
    pub exe: Option<PathBuf>,
    /// The command line after the executable's name.
    pub args: Vec<String>,
    /// Descriptors the role gets at 4, 5, ... (its channel is 3).
    pub fds: Vec<BorrowedFd<'a>>,
    /// Encoded first messages, waiting in its channel when it starts, in
    /// order (a role's hello, [`crate::role`], then the service's own).
    pub first: Vec<Vec<u8>>,
    pub restart: Restart,
}

impl RoleSpec<'_> {
    /// Start the role without waiting for its exec (roles start side by
    /// side); [`StartingRole::finish`] confirms it.
    pub fn start(&self) -> Result<StartingRole, String> {
        let (ours, theirs) = Channel::pair().map_err(|e| format!("socketpair: {e}"))?;
        let mut fds = vec![theirs.as_fd()];
        fds.extend_from_slice(&self.fds);
        let pending = crate::spawn::start(self.exe.as_deref(), &self.args, &fds)
            .map_err(|e| format!("starting the {} role: {e}", self.name))?;
        // Our copy of the role's end closes here; the role holds the only one.
        drop(theirs);
        for first in &self.first {
            // A fresh socket takes a few messages of at most the cap.
            ours.send_raw(first)
                .map_err(|e| format!("starting the {} role: {e}", self.name))?;
        }
        Ok(StartingRole {
            name: self.name,
            restart: self.restart,
            pending,
            chan: ours,
            started: Instant::now(),
        })
    }
}

/// A role whose process exists but whose exec is not confirmed yet.
pub struct StartingRole {
    name: &'static str,
    restart: Restart,
    pending: PendingRole,
    chan: Channel,
    started: Instant,
}

impl StartingRole {
    /// Wait until the role runs its binary, or say why it could not.
    pub fn finish(self) -> Result<Role, String> {
        let child = self
            .pending
            .finish()
            .map_err(|e| format!("starting the {} role: {e}", self.name))?;
        let (child, log) = child.into_parts();
        let mut role = Role::new(self.name, child, self.chan, log, self.started);
        role.restart = self.restart;
        Ok(role)
    }
}

/// A running role: its process, channel, outbox and log pipe.
pub struct Role {
    name: &'static str,
    restart: Restart,
    child: RoleProcess,
    chan: Channel,
    outbox: Outbox,
    log: ChildStderr,
    log_buf: Vec<u8>,
    log_limit: LineLimiter,
    started: Instant,
    /// The last line it logged at ERROR level (what it failed with).
    last_error: Option<String>,
}

impl Role {
    /// A role from its parts (tests build stand-in roles this way).
    pub fn new(
        name: &'static str,
        child: RoleProcess,
        chan: Channel,
        log: ChildStderr,
        started: Instant,
    ) -> Role {
        Role {
            name,
            restart: Restart::Never,
            child,
            chan,
            outbox: Outbox::new(OUTBOX_MAX),
            log,
            log_buf: Vec::new(),
            log_limit: LineLimiter::new(
                LineLimiter::ROLE_PER_SECOND,
                LineLimiter::ROLE_BURST,
                Instant::now(),
            ),
            started,
            last_error: None,
        }
    }

    /// The same role, restarted with back-off when it fails.
    pub fn restartable(mut self) -> Role {
        self.restart = Restart::WithBackoff;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Relay complete lines from the role's stderr, rate-limited; `false`
    /// at EOF.
    fn relay_logs(&mut self) -> bool {
        self.relay_logs_to(&mut |line| eprintln!("{line}"))
    }

    /// [`Role::relay_logs`] into `out` (tests read what would be logged).
    pub fn relay_logs_to(&mut self, out: &mut dyn FnMut(&str)) -> bool {
        let mut buf = [0u8; 4096];
        let n = match self.log.read(&mut buf) {
            Ok(0) | Err(_) => {
                let n = self.log_limit.take_suppressed();
                if n > 0 {
                    out(&format!(
                        "[{}] {n} more log lines not relayed (rate limit)",
                        self.name
                    ));
                }
                return false;
            }
            Ok(n) => n,
        };
        self.log_buf.extend_from_slice(&buf[..n]);
        while let Some(pos) = self.log_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.log_buf.drain(..=pos).collect();
            self.relay_line(&line[..line.len() - 1], out);
        }
        if self.log_buf.len() > crate::log::MAX_RELAYED_LINE {
            let line: Vec<u8> = std::mem::take(&mut self.log_buf);
            self.relay_line(&line, out);
        }
        true
    }

    fn relay_line(&mut self, line: &[u8], out: &mut dyn FnMut(&str)) {
        let name = self.name;
        if let Some(at) = line.windows(6).position(|w| w == b"ERROR ") {
            // Kept whatever the rate limit drops, without the level.
            let text = String::from_utf8_lossy(&line[at + 6..line.len().min(at + 6 + 240)]);
            self.last_error = Some(
                text.trim()
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect(),
            );
        }
        match self.log_limit.check(Instant::now()) {
            LineVerdict::Drop => {}
            LineVerdict::Relay => out(&crate::log::relay_line(name, line)),
            LineVerdict::RelayAfter(n) => {
                out(&format!("[{name}] {n} log lines not relayed (rate limit)"));
                out(&crate::log::relay_line(name, line));
            }
        }
    }

    /// Kill the role and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kill the role, then relay what it logged until its stderr ends. In
    /// this order: a live role (one that misbehaved and keeps its stderr
    /// open) would otherwise block the supervisor in the read forever.
    pub fn kill_and_drain(&mut self) {
        self.kill();
        while self.relay_logs() {}
    }
}

/// How a restarted role starts this time.
pub struct RoleStart {
    pub exe: Option<PathBuf>,
    pub args: Vec<String>,
    /// Encoded first messages (the role's hello, a fresh seed, the state to
    /// resume from...), in order.
    pub first: Vec<Vec<u8>>,
    /// Descriptors the role gets at 4, 5, ... as at its first start: the
    /// service keeps what only the privileged start could open (a listening
    /// socket on port 53) and hands a duplicate to each new generation.
    pub fds: Vec<OwnedFd>,
}

/// What a service supplies: its routing and policy. Every method gets a
/// [`Ctx`] to send to roles and to report a role at fault.
pub trait Service {
    /// One message from role `from`, still encoded (the service decodes it
    /// as that role's type). `Err` puts `from` at fault.
    fn on_message(&mut self, ctx: &mut Ctx<'_>, from: RoleId, msg: &[u8]) -> Result<(), String>;

    /// How to start `role` again (only asked for [`Restart::WithBackoff`]
    /// roles). An `Err` is retried after the next back-off.
    fn restart(&mut self, role: RoleId) -> Result<RoleStart, String>;

    /// `role` went down (it exited or was killed for a fault), after all it
    /// left in its channel was handled.
    fn on_role_down(&mut self, _ctx: &mut Ctx<'_>, _role: RoleId) {}

    /// `role` runs again after a restart; the role's first message is in
    /// its channel already.
    fn on_role_up(&mut self, _ctx: &mut Ctx<'_>, _role: RoleId) {}

    /// Called once a round (after every wake-up): timers of the service.
    /// Returns when it wants the next call at the latest. `Err` ends the
    /// service.
    fn on_round(&mut self, _ctx: &mut Ctx<'_>) -> Result<Option<Instant>, String> {
        Ok(None)
    }

    /// A stop was asked for (SIGTERM, SIGINT, SIGHUP): begin the service's
    /// orderly end (a release, the last intents).
    fn on_stop(&mut self, _ctx: &mut Ctx<'_>) {}

    /// During a stop: nothing the service waits for is left.
    fn stop_done(&self) -> bool {
        true
    }

    /// The service is done and exits with this code (a one-shot run).
    fn finished(&self) -> Option<ExitCode> {
        None
    }
}

struct Slot {
    name: &'static str,
    restart: Restart,
    /// The role at the other end of a direct channel ([`Runtime::link`]).
    peer: Option<RoleId>,
    role: Option<Role>,
    generation: u64,
    restarts: u32,
    restart_delay: Duration,
    restart_at: Option<Instant>,
    /// The last error line of its previous generation, if that one failed
    /// at setup ([`crate::role::EXIT_SETUP_FAILED`]).
    setup_failed: Option<String>,
}

/// A service's view of its roles while it handles something.
pub struct Ctx<'a> {
    slots: &'a mut [Slot],
    faults: &'a mut Vec<(RoleId, String)>,
    planned: &'a mut Vec<RoleId>,
}

impl Ctx<'_> {
    /// Queue `msg` for `to` (sent now if its socket takes it). Never blocks;
    /// a role that leaves [`OUTBOX_MAX`] messages unread is at fault. A
    /// message to a role that is down is dropped (a restarted role starts
    /// from its first message).
    pub fn send<T: Serialize>(&mut self, to: RoleId, msg: &T) {
        let Some(role) = self.slots[to].role.as_mut() else {
            return;
        };
        if let Err(e) = role.outbox.push(&role.chan, msg) {
            let why = match e {
                OutboxError::Full => "does not read its channel".to_string(),
                OutboxError::Channel(e) => format!("send: {e}"),
            };
            self.fault(to, why);
        }
    }

    /// Send `msg` to `to` only if its socket takes it now and nothing is
    /// queued before it; `false` when it was dropped (frames: the protocols
    /// retransmit) or the role is down.
    pub fn send_lossy<T: Serialize>(&mut self, to: RoleId, msg: &T) -> bool {
        let Some(role) = self.slots[to].role.as_mut() else {
            return false;
        };
        if !role.outbox.is_empty() {
            return false;
        }
        match role.chan.try_send(msg) {
            Ok(sent) => sent,
            Err(e) => {
                self.fault(to, format!("send: {e}"));
                false
            }
        }
    }

    /// Put `role` at fault: it is killed, and restarted or the service ends,
    /// once the current handler returns.
    pub fn fault(&mut self, role: RoleId, why: impl Into<String>) {
        self.faults.push((role, why.into()));
    }

    /// Start `role` again on purpose, once the current handler returns:
    /// it is stopped (what it left in its channel handled first) and
    /// started at once from [`Service::restart`], whatever its
    /// [`Restart`], with no back-off and logged as the service's choice,
    /// not a fault. For a role whose descriptors must change (a network
    /// role given sockets to new servers).
    pub fn restart(&mut self, role: RoleId, why: impl Into<String>) {
        if !self.planned.contains(&role) {
            self.planned.push(role);
        }
        self.faults.push((role, why.into()));
    }

    /// Whether `role` runs (and is not already at fault).
    pub fn is_up(&self, role: RoleId) -> bool {
        self.slots[role].role.is_some() && !self.faults.iter().any(|(r, _)| *r == role)
    }

    /// Counts the starts of `role`: messages sent to an earlier generation
    /// are not answered to a later one.
    pub fn generation(&self, role: RoleId) -> u64 {
        self.slots[role].generation
    }

    /// Times `role` was restarted.
    pub fn restarts(&self, role: RoleId) -> u32 {
        self.slots[role].restarts
    }

    /// The name `role` was started with.
    pub fn name(&self, role: RoleId) -> &'static str {
        self.slots[role].name
    }
}

/// The supervisor loop of one service.
pub struct Runtime<S: Service> {
    pub service: S,
    slots: Vec<Slot>,
    faults: Vec<(RoleId, String)>,
    /// Roles among `faults` the service restarts on purpose.
    planned: Vec<RoleId>,
    /// Why the service must end (a role that may not be restarted failed).
    fatal: Option<String>,
    /// Receive buffer, kept between rounds (a round that ends early with an
    /// error drops it; the next one makes a new one).
    buf: Vec<u8>,
}

impl<S: Service> Runtime<S> {
    /// A runtime over running roles, in the order of their [`RoleId`]s.
    pub fn new(service: S, roles: Vec<Role>) -> Self {
        let slots = roles
            .into_iter()
            .map(|role| Slot {
                name: role.name,
                restart: role.restart,
                peer: None,
                role: Some(role),
                generation: 0,
                restarts: 0,
                restart_delay: RESTART_FIRST,
                restart_at: None,
                setup_failed: None,
            })
            .collect();
        Runtime {
            service,
            slots,
            faults: Vec::new(),
            planned: Vec::new(),
            fatal: None,
            buf: Vec::new(),
        }
    }

    /// Declare a direct channel between roles `a` and `b`: a socket pair
    /// whose ends the roles got (each at the descriptor after its own, see
    /// [`link_pair`]) and over which they talk without the supervisor, for
    /// traffic too heavy to route through it (a DNS forwarder's queries
    /// between its network role and its engine). The two live and die
    /// together: a fault of one stops the other, and both are started again
    /// at once, with a fresh pair, so neither ever talks to a stale peer.
    /// Both must be restartable.
    pub fn link(mut self, a: RoleId, b: RoleId) -> Result<Self, String> {
        for id in [a, b] {
            let slot = self
                .slots
                .get(id)
                .ok_or_else(|| format!("no role {id} to link"))?;
            if slot.restart != Restart::WithBackoff {
                return Err(format!(
                    "the {} role has a direct channel, so it must be restartable",
                    slot.name
                ));
            }
            if slot.peer.is_some() {
                return Err(format!("the {} role has a direct channel already", slot.name));
            }
        }
        if a == b {
            return Err("a role cannot be linked to itself".into());
        }
        self.slots[a].peer = Some(b);
        self.slots[b].peer = Some(a);
        Ok(self)
    }

    /// Run until a signal on `signals` (and the orderly stop after it), the
    /// service's end, or a fatal fault. Kills every role before returning.
    pub fn run(&mut self, signals: &SignalPipe) -> ExitCode {
        let code = self.event_loop(signals);
        self.shutdown();
        code
    }

    fn event_loop(&mut self, signals: &SignalPipe) -> ExitCode {
        loop {
            if let Some(code) = self.service.finished() {
                return code;
            }
            self.restart_due();
            let next = match self.with_ctx(|s, ctx| s.on_round(ctx)) {
                Ok(next) => next,
                Err(e) => {
                    log::error!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(why) = self.fatal.take() {
                log::error!("{why}");
                return ExitCode::FAILURE;
            }
            let now = Instant::now();
            let mut until = now + Duration::from_secs(60);
            for at in self.slots.iter().filter_map(|s| s.restart_at).chain(next) {
                until = until.min(at);
            }
            let timeout_ms = until.saturating_duration_since(now).as_millis() as u64 + 1;
            match self.round(Some(signals.read.as_fd()), timeout_ms) {
                Ok(p) if p.signal => {
                    log::info!("signal {}: stopping", signals.take());
                    self.stop();
                    return ExitCode::SUCCESS;
                }
                Ok(_) => {}
                Err(e) => {
                    log::error!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    /// Run `f` on the service with a [`Ctx`], then act on the faults it
    /// reported (the runtime's own way in; tests use it to drive a service).
    pub fn with_ctx<T>(&mut self, f: impl FnOnce(&mut S, &mut Ctx<'_>) -> T) -> T {
        let mut ctx = Ctx {
            slots: &mut self.slots,
            faults: &mut self.faults,
            planned: &mut self.planned,
        };
        let out = f(&mut self.service, &mut ctx);
        self.act_on_faults();
        out
    }

    fn act_on_faults(&mut self) {
        while let Some((id, why)) = self.faults.pop() {
            let planned = self.planned.contains(&id);
            self.planned.retain(|&r| r != id);
            let Some(mut role) = self.slots[id].role.take() else {
                // Down already: a restart on purpose does not wait for
                // the back-off of the one scheduled.
                if planned && self.slots[id].restart_at.is_some() {
                    self.slots[id].restart_at = Some(Instant::now());
                }
                continue;
            };
            role.kill_and_drain();
            if let Some(peer) = self.slots[id].peer
                && let Some(p) = self.slots[peer].role.as_mut()
            {
                // The peer did nothing wrong: what it sent before it is
                // stopped is handled, as for a role that exited.
                p.kill();
                let mut buf = vec![0u8; mirage_ipc::MAX_MESSAGE_LEN];
                if let Err(e) = self.read_from(peer, DRAIN_MAX, true, &mut buf) {
                    log::warn!("{e}");
                }
                let why = format!("its direct peer, the {} role, stopped", self.slots[id].name);
                self.faults.push((peer, why));
            }
            let slot = &mut self.slots[id];
            // What the role said of its end (its own setup error).
            let code = role.child.exit_code();
            let said = role.last_error.take().unwrap_or_default();
            let setup_again = code == Some(crate::role::EXIT_SETUP_FAILED)
                && slot.setup_failed.as_deref() == Some(said.as_str());
            slot.setup_failed = (code == Some(crate::role::EXIT_SETUP_FAILED)).then(|| said.clone());
            match slot.restart {
                _ if planned => {
                    log::info!("{} stopped to start again ({why})", slot.name);
                    slot.restart_at = Some(Instant::now());
                }
                Restart::Never => {
                    self.fatal
                        .get_or_insert_with(|| format!("the {} role stopped ({why})", slot.name));
                }
                // A restart would fail the same way, forever: the service
                // stops, and says why.
                Restart::WithBackoff if code == Some(crate::role::EXIT_CANNOT_RUN) => {
                    self.fatal.get_or_insert_with(|| {
                        format!("the {} role cannot run ({said}): not restarting it", slot.name)
                    });
                }
                Restart::WithBackoff if setup_again => {
                    self.fatal.get_or_insert_with(|| {
                        format!(
                            "the {} role failed at its setup twice in a row ({said}): not restarting it",
                            slot.name
                        )
                    });
                }
                Restart::WithBackoff => {
                    if role.started.elapsed() >= STABLE {
                        slot.restart_delay = RESTART_FIRST;
                    }
                    log::error!(
                        "{} stopped ({why}); restarting in {:?}",
                        slot.name,
                        slot.restart_delay
                    );
                    slot.restart_at = Some(Instant::now() + slot.restart_delay);
                    slot.restart_delay = (slot.restart_delay * 2).min(RESTART_MAX);
                }
            }
            let mut ctx = Ctx {
                slots: &mut self.slots,
                faults: &mut self.faults,
                planned: &mut self.planned,
            };
            self.service.on_role_down(&mut ctx, id);
        }
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        let due = |s: &Slot| s.role.is_none() && s.restart_at.is_some_and(|at| at <= now);
        for id in 0..self.slots.len() {
            if !due(&self.slots[id]) {
                continue;
            }
            match self.slots[id].peer {
                None => {
                    let started = self.start_again(id, None);
                    self.started_again(id, started, now);
                }
                // A linked pair starts together, when both are due; the
                // lower id starts the pair.
                Some(peer) if peer > id && due(&self.slots[peer]) => {
                    let (a, b) = match link_pair() {
                        Ok(pair) => pair,
                        Err(e) => {
                            self.started_again(id, Err(e), now);
                            continue;
                        }
                    };
                    let first = self.start_again(id, Some(a));
                    let second = match first {
                        Ok(_) => self.start_again(peer, Some(b)),
                        Err(_) => Err(format!(
                            "not started with its peer, the {} role",
                            self.slots[id].name
                        )),
                    };
                    // Both or neither: one alone would wait on a dead channel.
                    let (first, second) = match (first, second) {
                        (Ok(r1), Ok(r2)) => (Ok(r1), Ok(r2)),
                        (Ok(mut r1), Err(e2)) => {
                            r1.kill_and_drain();
                            (Err(format!("its peer did not start: {e2}")), Err(e2))
                        }
                        (Err(e1), Err(e2)) => (Err(e1), Err(e2)),
                        (Err(_), Ok(_)) => unreachable!("the second starts only after the first"),
                    };
                    self.started_again(id, first, now);
                    self.started_again(peer, second, now);
                }
                Some(_) => {}
            }
        }
    }

    /// Start role `id` as [`Service::restart`] says, with the end of its
    /// direct channel after its own descriptors.
    fn start_again(&mut self, id: RoleId, link: Option<Channel>) -> Result<Role, String> {
        let name = self.slots[id].name;
        let start = self.service.restart(id)?;
        let mut fds: Vec<BorrowedFd<'_>> = start.fds.iter().map(AsFd::as_fd).collect();
        if let Some(end) = &link {
            fds.push(end.as_fd());
        }
        RoleSpec {
            name,
            exe: start.exe,
            args: start.args,
            fds,
            first: start.first,
            restart: Restart::WithBackoff,
        }
        .start()?
        .finish()
    }

    fn started_again(&mut self, id: RoleId, started: Result<Role, String>, now: Instant) {
        let slot = &mut self.slots[id];
        match started {
            Ok(role) => {
                slot.role = Some(role);
                slot.restart_at = None;
                slot.generation += 1;
                slot.restarts += 1;
                self.with_ctx(|s, ctx| s.on_role_up(ctx, id));
            }
            Err(e) => {
                log::error!("{e}");
                slot.restart_at = Some(now + slot.restart_delay);
                slot.restart_delay = (slot.restart_delay * 2).min(RESTART_MAX);
            }
        }
    }

    /// One round: wait up to `timeout_ms` for any role (or `signal`), then
    /// send what the roles' sockets take, relay logs and read at most
    /// [`BURST`] messages from each role. Nothing here blocks, so a role
    /// that floods or stops reading can slow a round but never hold it.
    fn round(&mut self, signal: Option<BorrowedFd<'_>>, timeout_ms: u64) -> Result<Progress, String> {
        // (slot, is log) for each polled fd, the signal last.
        let mut who: Vec<(RoleId, bool)> = Vec::new();
        let mut fds: Vec<(BorrowedFd<'_>, bool)> = Vec::new();
        for (id, slot) in self.slots.iter().enumerate() {
            if let Some(r) = &slot.role {
                fds.push((r.chan.as_fd(), !r.outbox.is_empty()));
                who.push((id, false));
                fds.push((r.log.as_fd(), false));
                who.push((id, true));
            }
        }
        if let Some(fd) = signal {
            fds.push((fd, false));
        }
        let ready = wait(&fds, Some(timeout_ms)).map_err(|e| format!("poll: {e}"))?;
        drop(fds);
        let progress = Progress {
            signal: signal.is_some() && ready.last().is_some_and(|r| r.readable),
            any: ready.iter().any(|r| r.readable),
        };
        let mut chan_ready = vec![false; self.slots.len()];
        let mut log_ready = vec![false; self.slots.len()];
        for (&(id, is_log), r) in who.iter().zip(&ready) {
            if is_log {
                log_ready[id] = r.readable;
            } else {
                chan_ready[id] = r.readable;
            }
        }

        for id in 0..self.slots.len() {
            if let Some(r) = &mut self.slots[id].role
                && let Err(e) = r.outbox.flush(&r.chan)
            {
                self.faults.push((id, format!("send: {e}")));
            }
        }
        self.act_on_faults();

        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(mirage_ipc::MAX_MESSAGE_LEN, 0);
        for id in 0..self.slots.len() {
            let exited = log_ready[id] && !self.slots[id].role.as_mut().is_some_and(|r| r.relay_logs());
            // A role that exited may have sent its last messages (a lease
            // to persist) just before: read all it left, then act.
            let budget = if exited { DRAIN_MAX } else { BURST };
            // (A dead role's channel is readable: its data, then EOF.)
            let readable = chan_ready[id] || (exited && self.readable_now(id)?);
            self.read_from(id, budget, readable, &mut buf)?;
            if exited && self.slots[id].role.is_some() {
                self.faults.push((id, "exited".into()));
                self.act_on_faults();
            }
        }
        self.buf = buf;
        if let Some(why) = self.fatal.take() {
            return Err(why);
        }
        Ok(progress)
    }

    /// Hand up to `budget` messages of role `id` to the service, the first
    /// only if `readable` says one is there.
    fn read_from(
        &mut self,
        id: RoleId,
        budget: usize,
        mut readable: bool,
        buf: &mut [u8],
    ) -> Result<(), String> {
        for _ in 0..budget {
            if !readable {
                break;
            }
            let Some(role) = &self.slots[id].role else { break };
            match role.chan.recv_into(buf) {
                Ok(Some(n)) => {
                    let res = self.with_ctx(|s, ctx| s.on_message(ctx, id, &buf[..n]));
                    if let Err(why) = res {
                        self.faults.push((id, format!("sent a bad message: {why}")));
                        self.act_on_faults();
                    }
                }
                Ok(None) => {
                    self.faults.push((id, "closed its channel".into()));
                    self.act_on_faults();
                }
                Err(e) => {
                    self.faults.push((id, format!("sent a bad message: {e}")));
                    self.act_on_faults();
                }
            }
            readable = self.readable_now(id)?;
        }
        Ok(())
    }

    /// Whether `role`'s channel has a message (or EOF) now.
    fn readable_now(&self, role: RoleId) -> Result<bool, String> {
        match &self.slots[role].role {
            Some(r) => Ok(wait_readable(&[r.chan.as_fd()], Some(0)).map_err(|e| format!("poll: {e}"))?[0]),
            None => Ok(false),
        }
    }

    /// The orderly stop: the service says what to do, then rounds run until
    /// it is done and every queue is empty, within [`STOP_GRACE`].
    fn stop(&mut self) {
        self.with_ctx(|s, ctx| s.on_stop(ctx));
        let until = Instant::now() + STOP_GRACE;
        while Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now()).as_millis() as u64;
            match self.round(None, left.clamp(1, 200)) {
                Ok(p) => {
                    let queued = self
                        .slots
                        .iter()
                        .any(|s| s.role.as_ref().is_some_and(|r| !r.outbox.is_empty()));
                    if !p.any && !queued && self.service.stop_done() {
                        break;
                    }
                }
                Err(e) => {
                    log::error!("{e}");
                    break;
                }
            }
        }
    }

    /// Kill every role and relay what they logged last. Every role is
    /// signalled before any is reaped: a role that outlived its direct
    /// peer by a reap would see the peer's channel close and say so.
    pub fn shutdown(&mut self) {
        for slot in &mut self.slots {
            if let Some(r) = &mut slot.role {
                let _ = r.child.kill();
            }
        }
        for slot in &mut self.slots {
            if let Some(r) = &mut slot.role {
                r.kill();
            }
        }
        for slot in &mut self.slots {
            if let Some(mut r) = slot.role.take() {
                while r.relay_logs() {}
            }
        }
    }

    /// Whether `role` runs now.
    pub fn is_up(&self, role: RoleId) -> bool {
        self.slots[role].role.is_some()
    }

    /// When a restart of `role` is scheduled.
    pub fn restart_at(&self, role: RoleId) -> Option<Instant> {
        self.slots[role].restart_at
    }

    /// Set the first restart delay of every role (tests that must not see
    /// a restart within their run).
    pub fn set_restart_delay(&mut self, delay: Duration) {
        for s in &mut self.slots {
            s.restart_delay = delay;
        }
    }
}

/// Intents forwarded from one role (the engine) to another (the actuator)
/// and not answered yet, by the asking role's generation, oldest first
/// (an actuator answers in order). An engine with `max` unanswered floods
/// the actuator (a real one never does) and is put at fault instead; an
/// answer meant for a generation that is gone is not handed to the next.
#[derive(Debug)]
pub struct Intents {
    from: RoleId,
    to: RoleId,
    max: usize,
    waiting: std::collections::VecDeque<u64>,
}

impl Intents {
    pub fn new(from: RoleId, to: RoleId, max: usize) -> Self {
        Intents {
            from,
            to,
            max,
            waiting: std::collections::VecDeque::new(),
        }
    }

    /// Forward `msg` from the asking role to the actuator, unless its
    /// generation has [`Intents::new`]'s `max` unanswered: then the asking
    /// role is put at fault. Says whether it was forwarded.
    pub fn forward<T: Serialize>(&mut self, ctx: &mut Ctx<'_>, msg: &T) -> bool {
        let generation = ctx.generation(self.from);
        if self.waiting.iter().filter(|&&g| g == generation).count() >= self.max {
            let why = format!(
                "more than {} intents waiting for the {}",
                self.max,
                ctx.name(self.to)
            );
            ctx.fault(self.from, why);
            return false;
        }
        self.waiting.push_back(generation);
        ctx.send(self.to, msg);
        true
    }

    /// The actuator answered the oldest intent: whether the answer is for
    /// the asking role as it runs now.
    pub fn answered(&mut self, ctx: &Ctx<'_>) -> bool {
        self.waiting.pop_front() == Some(ctx.generation(self.from))
    }

    /// Intents not answered yet.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// Frames (or datagrams) handed from role to role lossily, as a busy link
/// would drop them (the protocols retransmit), and counted when a role's
/// queue was full; logged at the 1st, 2nd, 4th, 8th... drop so that a
/// flood cannot flood the log.
#[derive(Debug, Default)]
pub struct Shed {
    count: u64,
}

impl Shed {
    /// Send `msg` to `to` if it runs and its socket takes it now.
    pub fn send<T: Serialize>(&mut self, ctx: &mut Ctx<'_>, to: RoleId, msg: &T) {
        if ctx.is_up(to) && !ctx.send_lossy(to, msg) {
            self.count += 1;
            if self.count.is_power_of_two() {
                log::warn!(
                    "the {} role's queue is full: {} frames dropped so far",
                    ctx.name(to),
                    self.count
                );
            }
        }
    }

    /// Frames dropped so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// The two ends of a direct channel between roles ([`Runtime::link`]): give
/// each role its end as the descriptor after its own (a role with two fds,
/// 4 and 5, finds it at 6), then drop both here, so that each role holds
/// the only copy of its end and sees the other's exit as the channel's end.
pub fn link_pair() -> Result<(Channel, Channel), String> {
    Channel::pair().map_err(|e| format!("socketpair: {e}"))
}

/// What one [`Runtime::round`] saw.
#[derive(Clone, Copy, Debug)]
struct Progress {
    signal: bool,
    any: bool,
}

/// SIGTERM, SIGINT and SIGHUP turned into a readable socket for poll.
pub struct SignalPipe {
    read: std::os::unix::net::UnixStream,
    /// The write end, for [`SignalPipe::for_test`] callers.
    write: Option<std::os::unix::net::UnixStream>,
}

impl SignalPipe {
    /// Catch the stop signals of this process.
    pub fn new() -> Result<Self, String> {
        let (read, write) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        read.set_nonblocking(true).map_err(|e| e.to_string())?;
        write.set_nonblocking(true).map_err(|e| e.to_string())?;
        for sig in [
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ] {
            let w = OwnedFd::from(write.try_clone().map_err(|e| e.to_string())?);
            signal_hook::low_level::pipe::register_raw(sig, w).map_err(|e| e.to_string())?;
        }
        Ok(SignalPipe { read, write: None })
    }

    /// A pipe no signal reaches; [`SignalPipe::raise`] stands in for one.
    pub fn for_test() -> Result<Self, String> {
        let (read, write) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        read.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(SignalPipe {
            read,
            write: Some(write),
        })
    }

    /// A handle that raises the stand-in signal (from another thread).
    pub fn raiser(&self) -> Option<std::os::unix::net::UnixStream> {
        self.write.as_ref().and_then(|w| w.try_clone().ok())
    }

    fn take(&self) -> &'static str {
        let mut buf = [0u8; 16];
        let _ = (&self.read).read(&mut buf);
        "received"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::sync::{Arc, Mutex};

    /// A stand-in role: `sh -c script`, whose stderr is the role's log, and
    /// the channel's far end for the test to play the role with.
    fn stand_in(name: &'static str, script: &str) -> (Role, Channel) {
        let mut child = std::process::Command::new("sh")
            .args(["-c", script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sh runs");
        let log = child.stderr.take().expect("piped stderr");
        let (ours, theirs) = Channel::pair().expect("socketpair");
        (Role::new(name, child.into(), ours, log, Instant::now()), theirs)
    }

    /// A service that records what it is told.
    #[derive(Default)]
    struct Recorder {
        got: Arc<Mutex<Vec<(RoleId, u32)>>>,
        down: Arc<Mutex<Vec<(RoleId, usize)>>>,
        /// The restarted role's script.
        restart_script: String,
        ups: u32,
    }

    impl Service for Recorder {
        fn on_message(&mut self, _: &mut Ctx<'_>, from: RoleId, msg: &[u8]) -> Result<(), String> {
            let n: u32 = mirage_ipc::decode(msg).map_err(|e| e.to_string())?;
            self.got.lock().unwrap().push((from, n));
            Ok(())
        }
        fn restart(&mut self, _: RoleId) -> Result<RoleStart, String> {
            Ok(RoleStart {
                exe: Some("/bin/sh".into()),
                args: vec!["-c".into(), self.restart_script.clone()],
                first: vec![mirage_ipc::encode(&7u32).unwrap()],
                fds: Vec::new(),
            })
        }
        fn on_role_down(&mut self, _: &mut Ctx<'_>, role: RoleId) {
            let seen = self.got.lock().unwrap().len();
            self.down.lock().unwrap().push((role, seen));
        }
        fn on_role_up(&mut self, _: &mut Ctx<'_>, _: RoleId) {
            self.ups += 1;
        }
    }

    /// Run `rt` on a thread; raise the stop signal after `after`; return it
    /// once it returned (failing if it did not within the grace and a margin).
    fn run_for(mut rt: Runtime<Recorder>, after: Duration) -> (ExitCode, Runtime<Recorder>) {
        let signals = SignalPipe::for_test().unwrap();
        let mut raise = signals.raiser().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let code = rt.run(&signals);
            let _ = tx.send((code, rt));
        });
        std::thread::sleep(after);
        let _ = raise.write_all(b"T");
        rx.recv_timeout(STOP_GRACE + Duration::from_secs(10))
            .expect("the runtime did not honour the signal: it is blocked")
    }

    #[test]
    fn a_dead_roles_last_messages_are_handled_before_its_exit() {
        // The role sends 200 messages and dies at once (its log ends with
        // the process): every message must reach the service, and only
        // then is the role reported down.
        let (engine, far) = stand_in("engine", "exit 0");
        for n in 0..200u32 {
            far.send(&n).unwrap();
        }
        drop(far);
        let (other, _keep) = stand_in("network", "exec sleep 60");
        let service = Recorder {
            restart_script: "exec sleep 60".into(),
            ..Recorder::default()
        };
        let (got, down) = (service.got.clone(), service.down.clone());
        let mut rt = Runtime::new(service, vec![engine.restartable(), other]);
        rt.set_restart_delay(Duration::from_secs(3600));
        let (code, rt) = run_for(rt, Duration::from_millis(700));
        assert_eq!(code, ExitCode::SUCCESS);
        let got = got.lock().unwrap().clone();
        assert_eq!(got, (0..200).map(|n| (0, n)).collect::<Vec<_>>());
        assert_eq!(
            *down.lock().unwrap(),
            vec![(0, 200)],
            "down before its messages were read"
        );
        assert!(rt.restart_at(0).is_some());
    }

    /// Run `rt` on a thread until it ends by itself (bounded: a runtime
    /// that goes on restarting fails the test instead of hanging it).
    fn run_to_its_end(mut rt: Runtime<Recorder>) -> (ExitCode, Runtime<Recorder>) {
        let signals = SignalPipe::for_test().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let code = rt.run(&signals);
            let _ = tx.send((code, rt));
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the runtime went on restarting a role that cannot start")
    }

    fn fails_at_setup(error: &str) -> String {
        format!(
            "echo 'ERROR {error}' >&2; exit {}",
            crate::role::EXIT_SETUP_FAILED
        )
    }

    #[test]
    fn a_role_that_fails_at_setup_the_same_way_twice_in_a_row_ends_the_service() {
        let nofile = fails_at_setup("sandbox: RLIMIT_NOFILE: Operation not permitted (os error 1)");
        let (engine, _e) = stand_in("engine", &nofile);
        let (network, _n) = stand_in("network", "exec sleep 60");
        let service = Recorder {
            restart_script: nofile.clone(),
            ..Recorder::default()
        };
        let mut rt = Runtime::new(service, vec![engine.restartable(), network]);
        rt.set_restart_delay(Duration::from_millis(10));
        let (code, rt) = run_to_its_end(rt);
        assert_eq!(code, ExitCode::FAILURE);
        assert_eq!(rt.service.ups, 1, "restarted once, then given up");
        assert!(!rt.is_up(0) && rt.restart_at(0).is_none(), "no restart scheduled");

        // Another error the second time: one more try, then the same one
        // twice ends it.
        let (engine, _e) = stand_in(
            "engine",
            &fails_at_setup("sandbox: setresuid: Operation not permitted"),
        );
        let (network, _n) = stand_in("network", "exec sleep 60");
        let service = Recorder {
            restart_script: nofile,
            ..Recorder::default()
        };
        let mut rt = Runtime::new(service, vec![engine.restartable(), network]);
        rt.set_restart_delay(Duration::from_millis(10));
        let (code, rt) = run_to_its_end(rt);
        assert_eq!(code, ExitCode::FAILURE);
        assert_eq!(rt.service.ups, 2);
    }

    #[test]
    fn a_role_that_cannot_run_ends_the_service_at_once_and_one_past_its_setup_is_restarted() {
        let script = format!(
            "echo 'ERROR no way to run here' >&2; exit {}",
            crate::role::EXIT_CANNOT_RUN
        );
        let (engine, _e) = stand_in("engine", &script);
        let (network, _n) = stand_in("network", "exec sleep 60");
        let service = Recorder {
            restart_script: "exec sleep 60".into(),
            ..Recorder::default()
        };
        let mut rt = Runtime::new(service, vec![engine.restartable(), network]);
        rt.set_restart_delay(Duration::from_millis(10));
        let (code, rt) = run_to_its_end(rt);
        assert_eq!(code, ExitCode::FAILURE);
        assert_eq!(rt.service.ups, 0, "never restarted");

        // The same error, but after its setup (exit status 1): restarted
        // every time, as any fault of a role facing hostile input.
        let after_setup = "echo 'ERROR bad input' >&2; exit 1";
        let (engine, _e) = stand_in("engine", after_setup);
        let (network, _n) = stand_in("network", "exec sleep 60");
        let service = Recorder {
            restart_script: after_setup.into(),
            ..Recorder::default()
        };
        let mut rt = Runtime::new(service, vec![engine.restartable(), network]);
        rt.set_restart_delay(Duration::from_millis(10));
        let (code, rt) = run_for(rt, Duration::from_millis(500));
        assert_eq!(code, ExitCode::SUCCESS, "ended by the signal, not by itself");
        assert!(rt.service.ups >= 2, "restarted {} times", rt.service.ups);
    }

    #[test]
    fn a_restartable_role_is_started_again_and_a_fixed_one_ends_the_service() {
        // The engine dies at once; its restart (a shell that exits after a
        // while) gets the service's first message in its channel.
        let (engine, _e) = stand_in("engine", "exit 3");
        let (network, _n) = stand_in("network", "exec sleep 60");
        let service = Recorder {
            restart_script: "exec sleep 60".into(),
            ..Recorder::default()
        };
        let mut rt = Runtime::new(service, vec![engine.restartable(), network]);
        rt.set_restart_delay(Duration::from_millis(50));
        let (code, rt) = run_for(rt, Duration::from_millis(1500));
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(rt.service.ups, 1, "the engine was not restarted exactly once");
        // A role that may not be restarted ends the service with failure.
        let (network, _n) = stand_in("network", "exit 0");
        let mut rt = Runtime::new(Recorder::default(), vec![network]);
        let signals = SignalPipe::for_test().unwrap();
        assert_eq!(rt.run(&signals), ExitCode::FAILURE);
    }

    /// Restarts the role it is told to, on its first message.
    struct Replanner {
        ups: u32,
    }

    impl Service for Replanner {
        fn on_message(&mut self, ctx: &mut Ctx<'_>, from: RoleId, _: &[u8]) -> Result<(), String> {
            ctx.restart(from, "new descriptors");
            Ok(())
        }
        fn restart(&mut self, _: RoleId) -> Result<RoleStart, String> {
            Ok(RoleStart {
                exe: Some("/bin/sh".into()),
                args: vec!["-c".into(), "exec sleep 60".into()],
                first: Vec::new(),
                fds: Vec::new(),
            })
        }
        fn on_role_up(&mut self, _: &mut Ctx<'_>, _: RoleId) {
            self.ups += 1;
        }
    }

    #[test]
    fn a_role_restarted_on_purpose_starts_again_at_once_even_a_fixed_one() {
        // A fixed role (Restart::Never) that says something: the service
        // starts it again; the service goes on, with no back-off (the
        // delay an hour: a restart after it would not happen in the test).
        let (network, far) = stand_in("network", "exec sleep 60");
        far.send(&1u32).unwrap();
        let mut rt = Runtime::new(Replanner { ups: 0 }, vec![network]);
        rt.set_restart_delay(Duration::from_secs(3600));
        let signals = SignalPipe::for_test().unwrap();
        let mut raise = signals.raiser().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let code = rt.run(&signals);
            let _ = tx.send((code, rt));
        });
        std::thread::sleep(Duration::from_millis(700));
        let _ = raise.write_all(b"T");
        let (code, rt) = rx
            .recv_timeout(STOP_GRACE + Duration::from_secs(10))
            .expect("the runtime did not honour the signal");
        assert_eq!(code, ExitCode::SUCCESS, "a planned restart is no fault");
        assert_eq!(rt.service.ups, 1);
        assert!(rt.planned.is_empty());
        drop(far);
    }

    /// Records the raw messages of linked stand-in roles; restarts each
    /// with its script for the next generation.
    struct LinkRecorder {
        got: Vec<(RoleId, Vec<u8>)>,
        scripts: [&'static str; 2],
        ups: Vec<RoleId>,
    }

    impl Service for LinkRecorder {
        fn on_message(&mut self, _: &mut Ctx<'_>, from: RoleId, msg: &[u8]) -> Result<(), String> {
            self.got.push((from, msg.to_vec()));
            Ok(())
        }
        fn restart(&mut self, role: RoleId) -> Result<RoleStart, String> {
            Ok(RoleStart {
                exe: Some("/bin/sh".into()),
                args: vec!["-c".into(), self.scripts[role].into()],
                first: Vec::new(),
                fds: Vec::new(),
            })
        }
        fn on_role_up(&mut self, _: &mut Ctx<'_>, role: RoleId) {
            self.ups.push(role);
        }
    }

    fn sh_role<'a>(name: &'static str, script: &str, fds: Vec<BorrowedFd<'a>>) -> Role {
        RoleSpec {
            name,
            exe: Some("/bin/sh".into()),
            args: vec!["-c".into(), script.into()],
            fds,
            first: Vec::new(),
            restart: Restart::WithBackoff,
        }
        .start()
        .and_then(StartingRole::finish)
        .expect("sh role starts")
    }

    #[test]
    fn linked_roles_talk_directly_and_live_and_die_together() {
        // Role 0 echoes what comes on its direct channel (fd 4, after no
        // descriptors of its own); role 1 asks over the link and passes the
        // answer to the supervisor on its channel (fd 3), then exits. Its
        // exit takes role 0 down with it; both start again on a fresh pair,
        // and the second generation of role 1 stays.
        let echo = "exec cat <&4 >&4";
        let ask_and_exit = "printf ping >&4; head -c 4 <&4 >&3";
        let ask_and_stay = "printf pong >&4; head -c 4 <&4 >&3; exec sleep 60";
        let (a, b) = link_pair().unwrap();
        let roles = vec![
            sh_role("engine", echo, vec![a.as_fd()]),
            sh_role("network", ask_and_exit, vec![b.as_fd()]),
        ];
        drop((a, b));
        let service = LinkRecorder {
            got: Vec::new(),
            scripts: [echo, ask_and_stay],
            ups: Vec::new(),
        };
        let mut rt = Runtime::new(service, roles).link(0, 1).unwrap();
        rt.set_restart_delay(Duration::from_millis(50));
        let signals = SignalPipe::for_test().unwrap();
        let mut raise = signals.raiser().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let code = rt.run(&signals);
            let _ = tx.send((code, rt));
        });
        std::thread::sleep(Duration::from_millis(1500));
        let _ = raise.write_all(b"T");
        let (code, rt) = rx.recv_timeout(STOP_GRACE + Duration::from_secs(10)).unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(
            rt.service.got,
            vec![(1, b"ping".to_vec()), (1, b"pong".to_vec())],
            "the answers over the link, from each generation"
        );
        let mut ups = rt.service.ups.clone();
        ups.sort();
        assert_eq!(ups, vec![0, 1], "both roles restarted, once each");
    }

    /// Restarts its role with a duplicate of a descriptor it keeps.
    struct KeepsFd {
        fd: OwnedFd,
    }

    impl Service for KeepsFd {
        fn on_message(&mut self, _: &mut Ctx<'_>, _: RoleId, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
        fn restart(&mut self, _: RoleId) -> Result<RoleStart, String> {
            Ok(RoleStart {
                exe: Some("/bin/sh".into()),
                args: vec!["-c".into(), "printf again >&4; exec sleep 60".into()],
                first: Vec::new(),
                fds: vec![self.fd.try_clone().map_err(|e| e.to_string())?],
            })
        }
    }

    #[test]
    fn a_restarted_role_gets_the_descriptors_its_service_kept() {
        let (kept, mut ours) = std::os::unix::net::UnixStream::pair().unwrap();
        let (engine, _e) = stand_in("engine", "exit 0");
        let mut rt = Runtime::new(KeepsFd { fd: kept.into() }, vec![engine.restartable()]);
        rt.set_restart_delay(Duration::from_millis(20));
        let signals = SignalPipe::for_test().unwrap();
        let mut raise = signals.raiser().unwrap();
        let runner = std::thread::spawn(move || rt.run(&signals));
        ours.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = [0u8; 5];
        let read = ours.read_exact(&mut got);
        let _ = raise.write_all(b"T");
        assert_eq!(runner.join().unwrap(), ExitCode::SUCCESS);
        read.expect("the restarted role wrote to the descriptor it was given");
        assert_eq!(&got, b"again");
    }

    #[test]
    fn only_two_restartable_roles_can_be_linked() {
        let (fixed, _f) = stand_in("network", "exec sleep 60");
        let (engine, _e) = stand_in("engine", "exec sleep 60");
        let service = LinkRecorder {
            got: Vec::new(),
            scripts: ["", ""],
            ups: Vec::new(),
        };
        let rt = Runtime::new(service, vec![engine.restartable(), fixed]);
        let err = match rt.link(0, 1) {
            Ok(_) => panic!("a role that may not restart was linked"),
            Err(e) => e,
        };
        assert!(err.contains("must be restartable"), "{err}");
    }

    #[test]
    fn a_role_flooding_messages_cannot_hold_off_a_signal() {
        let (engine, far) = stand_in("engine", "exec sleep 60");
        std::thread::spawn(move || {
            let mut n = 0u32;
            while far.send(&n).is_ok() {
                n = n.wrapping_add(1);
            }
        });
        let (code, _rt) = run_for(
            Runtime::new(Recorder::default(), vec![engine]),
            Duration::from_millis(300),
        );
        assert_eq!(code, ExitCode::SUCCESS);
    }

    #[test]
    fn a_role_flooding_its_log_is_relayed_at_a_bounded_rate() {
        let (mut role, _chan) = stand_in("engine", "exec yes 'INFO flood' >&2");
        let start = Instant::now();
        let (mut relayed, mut summaries) = (0u64, 0u64);
        while start.elapsed() < Duration::from_millis(1500) {
            assert!(role.relay_logs_to(&mut |line| {
                if line.contains("not relayed (rate limit)") {
                    summaries += 1;
                } else {
                    assert_eq!(line, "[engine] INFO flood");
                    relayed += 1;
                }
            }));
        }
        let secs = start.elapsed().as_secs() + 1;
        let bound = u64::from(LineLimiter::ROLE_BURST) + secs * u64::from(LineLimiter::ROLE_PER_SECOND);
        assert!(relayed <= bound, "{relayed} lines relayed (bound {bound})");
        assert!(relayed >= u64::from(LineLimiter::ROLE_BURST), "{relayed}");
        assert!(summaries >= 1 && summaries <= secs, "{summaries} summary lines");
        role.kill();
    }

    #[test]
    fn stopping_a_live_role_that_keeps_its_stderr_open_returns() {
        // A misbehaving role is still alive when it is stopped; reading its
        // stderr to the end before killing it would wait for ever.
        let (mut role, _chan) = stand_in("engine", "exec sleep 60");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            role.kill_and_drain();
            let _ = tx.send(role.child.try_wait().map(|s| s.is_some()));
        });
        let reaped = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("stopping the role blocked on its log pipe");
        assert!(matches!(reaped, Ok(true)), "the role was not killed and reaped");
    }
}
