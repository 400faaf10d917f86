//! Integration-test harness: runs the real `/usr/sbin/gmond` with modpython.so.
//!
//! Every [`Gmond`] lives in its own temporary directory with its own loopback
//! ports, so tests can run in parallel. gmond only reports a metric in its XML
//! after the value went out over its UDP send channel and came back in through
//! its receive channel; the config therefore points both at the same port.
//!
//! Each test binary compiles this module separately and uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The gmond binary the harness runs; `GMOND` overrides it.
pub const DEFAULT_GMOND: &str = "/usr/sbin/gmond";

/// A systemd-like PATH, so nothing a module runs (a `python3` subprocess, a
/// tool) comes from the developer's shell or pyenv. It does not choose the
/// embedded interpreter: the host sets `sys.prefix` to the Python it was
/// built against (`PyConfig.home`, recorded by build.rs).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How often the `wait_*` helpers re-check their condition.
const POLL: Duration = Duration::from_millis(50);

/// How often [`Gmond::hold_for`] reads the XML: several reads per collection
/// round of the suites' `collect_every = 1` groups.
pub const HOLD_POLL: Duration = Duration::from_millis(200);

/// How long `start()` waits for gmond's TCP port before handing gmond over anyway.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Bind races with other processes picking free ports are retried this often.
const START_ATTEMPTS: u32 = 4;

/// Resolves a path given relative to the crate root (where Cargo.toml lives),
/// so tests work no matter which directory the test runner uses as cwd.
pub fn repo_path(p: impl AsRef<Path>) -> PathBuf {
    let p = p.as_ref();
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
    }
}

/// The modpython.so built by cargo for the profile of the running test.
///
/// `cargo test` compiles the library with `--crate-type cdylib --crate-type rlib`
/// into `target/<profile>/deps/` but only `cargo build` copies the .so up to
/// `target/<profile>/`. The copy in `deps/` is therefore the one that matches the
/// code under test; the uplifted one may be stale. `MODPYTHON_SO` overrides both.
pub fn modpython_so() -> PathBuf {
    if let Some(p) = std::env::var_os("MODPYTHON_SO") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a parent dir");
    let candidates = [
        deps.join("libmodpython.so"),
        deps.parent()
            .map(|profile| profile.join("libmodpython.so"))
            .unwrap_or_default(),
    ];
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "libmodpython.so not found (looked at {candidates:?}); \
         run the tests through `cargo test`, or set MODPYTHON_SO"
    );
}

fn gmond_binary() -> PathBuf {
    std::env::var_os("GMOND")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_GMOND))
}

// ---------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------

enum Pyconf {
    File(PathBuf),
    Text(String, String),
}

/// Describes one gmond run. Paths may be relative to the crate root.
pub struct GmondBuilder {
    module_dirs: Vec<PathBuf>,
    module_files: Vec<(String, String)>,
    pyconfs: Vec<Pyconf>,
    host_params: Vec<(String, String)>,
    python_module_raw: Vec<String>,
    module_params: Option<String>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    inherit_env: bool,
    path: OsString,
    debug_level: u32,
    setuid_user: Option<String>,
    extra_config: Vec<String>,
    python_module: bool,
    so_path: Option<PathBuf>,
    gmond_args: Vec<OsString>,
    globals_raw: Vec<String>,
    channels: Option<String>,
    fixed_udp_port: Option<u16>,
    fixed_tcp_port: Option<u16>,
    config_template: Option<String>,
}

impl Default for GmondBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GmondBuilder {
    pub fn new() -> Self {
        Self {
            module_dirs: Vec::new(),
            module_files: Vec::new(),
            pyconfs: Vec::new(),
            host_params: Vec::new(),
            python_module_raw: Vec::new(),
            module_params: None,
            env: Vec::new(),
            env_remove: Vec::new(),
            inherit_env: false,
            path: OsString::from(DEFAULT_PATH),
            debug_level: 0,
            setuid_user: None,
            extra_config: Vec::new(),
            python_module: true,
            so_path: None,
            gmond_args: Vec::new(),
            globals_raw: Vec::new(),
            channels: None,
            fixed_udp_port: None,
            fixed_tcp_port: None,
            config_template: None,
        }
    }

    /// Copies the contents of `dir` (e.g. `tests/fixtures/x` or `examples/x`)
    /// into the run's python module dir. May be called several times.
    pub fn module_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.module_dirs.push(repo_path(dir));
        self
    }

    /// A whole scenario directory (`tests/fixtures/x`, `examples/x`): its files
    /// go to the module dir and its `*.pyconf` files to conf.d.
    pub fn fixture(self, dir: impl AsRef<Path>) -> Self {
        let dir = repo_path(dir);
        self.module_dir(&dir).pyconfs_from(&dir)
    }

    /// Writes one file (usually a `.py`) into the python module dir.
    pub fn module_file(mut self, name: &str, contents: &str) -> Self {
        self.module_files.push((name.into(), contents.into()));
        self
    }

    /// Copies a `.pyconf` file into the run's conf.d.
    pub fn pyconf(mut self, file: impl AsRef<Path>) -> Self {
        self.pyconfs.push(Pyconf::File(repo_path(file)));
        self
    }

    /// Copies every `*.pyconf` found directly in `dir` into the run's conf.d.
    pub fn pyconfs_from(mut self, dir: impl AsRef<Path>) -> Self {
        let dir = repo_path(dir);
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension() == Some(OsStr::new("pyconf")))
            .collect();
        found.sort();
        self.pyconfs.extend(found.into_iter().map(Pyconf::File));
        self
    }

    /// Drops raw config text into conf.d as `<name>` (".pyconf" is appended
    /// when missing, because the include glob only matches `*.pyconf`).
    pub fn pyconf_text(mut self, name: &str, text: &str) -> Self {
        let name = if name.ends_with(".pyconf") {
            name.to_string()
        } else {
            format!("{name}.pyconf")
        };
        self.pyconfs.push(Pyconf::Text(name, text.into()));
        self
    }

    /// Adds `param NAME { value = "VALUE" }` to the `python_module` block.
    pub fn host_param(mut self, name: &str, value: &str) -> Self {
        self.host_params.push((name.into(), value.into()));
        self
    }

    /// Adds raw text inside the `python_module` block (e.g. `enabled = no`,
    /// or a `param` without a value).
    pub fn python_module_raw(mut self, text: &str) -> Self {
        self.python_module_raw.push(text.into());
        self
    }

    /// Replaces the `params = "<tmp>/modules"` value of the python_module block.
    /// `{modules}` in the string is replaced by the run's module dir.
    pub fn module_params(mut self, params: &str) -> Self {
        self.module_params = Some(params.into());
        self
    }

    /// Leaves the `python_module` block out, so gmond runs without modpython.so.
    pub fn without_python_module(mut self) -> Self {
        self.python_module = false;
        self
    }

    /// Uses this .so instead of the one cargo built for this test.
    pub fn so_path(mut self, so: impl AsRef<Path>) -> Self {
        self.so_path = Some(so.as_ref().to_path_buf());
        self
    }

    /// Sets an environment variable for gmond.
    pub fn env(mut self, key: impl AsRef<OsStr>, val: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_os_string(), val.as_ref().to_os_string()));
        self
    }

    /// Removes an environment variable (only meaningful with `inherit_env`).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env_remove.push(key.as_ref().to_os_string());
        self
    }

    /// By default gmond gets a service-like environment (PATH, LANG, TMPDIR and
    /// whatever `env()` adds) so results do not depend on the developer's shell.
    /// This passes the test process's environment through instead.
    pub fn inherit_env(mut self) -> Self {
        self.inherit_env = true;
        self
    }

    /// Overrides gmond's PATH (default: [`DEFAULT_PATH`]).
    pub fn path_env(mut self, path: impl AsRef<OsStr>) -> Self {
        self.path = path.as_ref().to_os_string();
        self
    }

    /// `globals.debug_level`. Levels > 1 make gmond print its debug_msg trace.
    pub fn debug_level(mut self, level: u32) -> Self {
        self.debug_level = level;
        self
    }

    /// `setuid = yes` and `user = USER` in `globals` (the default is
    /// `setuid = no`): gmond drops to USER after modpython's `init`, and a
    /// SIGHUP re-exec runs `init` as USER. The run's dirs are 0755 and its
    /// files 0644 (umask 022), so USER can read them.
    pub fn setuid_user(mut self, user: &str) -> Self {
        self.setuid_user = Some(user.into());
        self
    }

    /// Appends raw text to the end of the main config file.
    pub fn extra_config(mut self, text: &str) -> Self {
        self.extra_config.push(text.into());
        self
    }

    /// Extra command-line arguments after `-f -c <conf>` (e.g. `-m`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.gmond_args.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds a line inside the `globals` block, after the harness's own
    /// settings (libconfuse keeps the last value, so this also overrides them:
    /// `.global("send_metadata_interval", "5")`, `.global("mute", "yes")`).
    pub fn global(mut self, key: &str, value: &str) -> Self {
        self.globals_raw.push(format!("{key} = {value}"));
        self
    }

    /// Replaces the harness's three channel lines (UDP send and receive on one
    /// loopback port, TCP accept) with `text`, e.g. to send to another gmond.
    /// `{udp_port}` and `{tcp_port}` in `text` become the run's ports. Keep a
    /// `tcp_accept_channel` on `{tcp_port}`: `start()` waits for it. Stay on
    /// loopback.
    pub fn channels(mut self, text: &str) -> Self {
        self.channels = Some(text.into());
        self
    }

    /// Uses this UDP port instead of a free one (e.g. to restart a gmond that
    /// peers send to). `start()` retries a few times if it is still taken.
    pub fn udp_port(mut self, port: u16) -> Self {
        self.fixed_udp_port = Some(port);
        self
    }

    /// Uses this TCP (XML) port instead of a free one.
    pub fn tcp_port(mut self, port: u16) -> Self {
        self.fixed_tcp_port = Some(port);
        self
    }

    /// Uses `text` as the whole config file instead of generating one (the
    /// module, pyconf, global and channel options are then ignored).
    /// `{udp_port}`, `{tcp_port}`, `{dir}`, `{modules}` and `{confd}` are
    /// replaced by the run's values.
    pub fn config_template(mut self, text: &str) -> Self {
        self.config_template = Some(text.into());
        self
    }

    /// Creates the temp dir, writes the config and starts gmond. Panics on
    /// setup errors. gmond exiting early (e.g. a config error) is not an error:
    /// inspect it with [`Gmond::wait_exit`] and [`Gmond::log`].
    pub fn start(self) -> Gmond {
        let so = if self.python_module {
            Some(self.so_path.clone().unwrap_or_else(modpython_so))
        } else {
            None
        };
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let g = self.start_once(so.as_deref());
            if g.wait_ready(STARTUP_TIMEOUT) {
                return g;
            }
            let log = g.log();
            // Another process may grab a port between our probe and gmond's bind.
            if log.contains("Unable to create") {
                last_log = log;
                if self.fixed_udp_port.is_some() || self.fixed_tcp_port.is_some() {
                    // A fixed port does not change between attempts: give
                    // its previous owner time to let go of it.
                    thread::sleep(Duration::from_secs(1));
                }
                continue;
            }
            return g;
        }
        panic!("gmond could not bind its ports after {START_ATTEMPTS} attempts:\n{last_log}");
    }

    fn start_once(&self, so: Option<&Path>) -> Gmond {
        let dir = TempDir::new();
        let modules = dir.path().join("modules");
        let confd = dir.path().join("conf.d");
        mkdir(&modules);
        mkdir(&confd);

        for src in &self.module_dirs {
            copy_tree(src, &modules);
        }
        for (name, text) in &self.module_files {
            write(&modules.join(name), text);
        }
        for (i, p) in self.pyconfs.iter().enumerate() {
            // A numeric prefix keeps names unique; the load order is readdir
            // order anyway, so it carries no meaning.
            match p {
                Pyconf::File(src) => {
                    let base = src.file_name().expect("pyconf file name");
                    let dst = confd.join(format!("{i:02}-{}", base.to_string_lossy()));
                    std::fs::copy(src, &dst)
                        .unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
                }
                Pyconf::Text(name, text) => write(&confd.join(format!("{i:02}-{name}")), text),
            }
        }

        let udp_port = self.fixed_udp_port.unwrap_or_else(free_udp_port);
        let tcp_port = self.fixed_tcp_port.unwrap_or_else(free_tcp_port);
        let conf = dir.path().join("gmond.conf");
        let text = match &self.config_template {
            Some(t) => t
                .replace("{udp_port}", &udp_port.to_string())
                .replace("{tcp_port}", &tcp_port.to_string())
                .replace("{dir}", &dir.path().to_string_lossy())
                .replace("{modules}", &modules.to_string_lossy())
                .replace("{confd}", &confd.to_string_lossy()),
            None => self.config_text(so, &modules, &confd, udp_port, tcp_port),
        };
        write(&conf, &text);
        if self.setuid_user.is_some() {
            // Whatever the umask, gmond's user must read all of it (a SIGHUP
            // re-exec reads the config and imports the modules as that user).
            readable_by_all(dir.path());
        }

        let mut cmd = Command::new(gmond_binary());
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .args(&self.gmond_args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !self.inherit_env {
            cmd.env_clear();
            cmd.env("LANG", "C.UTF-8");
            cmd.env("TMPDIR", dir.path());
        }
        cmd.env("PATH", &self.path);
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }

        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", gmond_binary().display()));
        let output = Arc::new(Output::default());
        let readers = vec![
            spawn_reader(child.stdout.take().expect("piped stdout"), &output),
            spawn_reader(child.stderr.take().expect("piped stderr"), &output),
        ];
        Gmond {
            pid: child.id(),
            child: Mutex::new(child),
            status: Mutex::new(None),
            output,
            readers: Mutex::new(readers),
            udp_port,
            tcp_port,
            conf,
            modules,
            confd,
            dir,
        }
    }

    fn config_text(
        &self,
        so: Option<&Path>,
        modules: &Path,
        confd: &Path,
        udp_port: u16,
        tcp_port: u16,
    ) -> String {
        let mut c = String::new();
        // buffer = 10485760 on the receive channel is deliberately absent:
        // gmond exits when the kernel caps it (net.core.rmem_max, 4 MiB here).
        let _ = write!(
            c,
            "globals {{\n  daemonize = no\n  setuid = {setuid}\n  user = {user}\n  debug_level = {dbg}\n  \
             host_dmax = 0\n  send_metadata_interval = 0\n",
            setuid = if self.setuid_user.is_some() {
                "yes"
            } else {
                "no"
            },
            user = self.setuid_user.as_deref().unwrap_or("nobody"),
            dbg = self.debug_level,
        );
        for raw in &self.globals_raw {
            let _ = writeln!(c, "  {raw}");
        }
        c.push_str("}\ncluster { name = \"modpython-test\" }\nhost { location = \"test\" }\n");
        match &self.channels {
            Some(text) => {
                c.push_str(
                    &text
                        .replace("{udp_port}", &udp_port.to_string())
                        .replace("{tcp_port}", &tcp_port.to_string()),
                );
                c.push('\n');
            }
            None => {
                let _ = write!(
                    c,
                    "udp_send_channel {{ host = 127.0.0.1 port = {udp_port} }}\n\
                     udp_recv_channel {{ bind = 127.0.0.1 port = {udp_port} }}\n\
                     tcp_accept_channel {{ bind = 127.0.0.1 port = {tcp_port} }}\n",
                );
            }
        }
        if let Some(so) = so {
            let params = self
                .module_params
                .as_deref()
                .map(|p| p.replace("{modules}", &modules.to_string_lossy()))
                .unwrap_or_else(|| modules.to_string_lossy().into_owned());
            let _ = write!(
                c,
                "modules {{\n  module {{\n    name = \"python_module\"\n    path = \"{}\"\n    params = \"{}\"\n",
                so.display(),
                params,
            );
            for (k, v) in &self.host_params {
                let _ = writeln!(c, "    param \"{k}\" {{ value = \"{v}\" }}");
            }
            for raw in &self.python_module_raw {
                let _ = writeln!(c, "    {raw}");
            }
            c.push_str("  }\n}\n");
        }
        for extra in &self.extra_config {
            c.push_str(extra);
            c.push('\n');
        }
        let _ = writeln!(c, "include ('{}/*.pyconf')", confd.display());
        c
    }
}

// ---------------------------------------------------------------------------
// Running gmond
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Output {
    buf: Mutex<OutputBuf>,
    changed: Condvar,
}

#[derive(Default)]
struct OutputBuf {
    bytes: Vec<u8>,
    closed_streams: u32,
}

fn spawn_reader(mut src: impl Read + Send + 'static, out: &Arc<Output>) -> JoinHandle<()> {
    let out = Arc::clone(out);
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            let n = match src.read(&mut chunk) {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            let mut b = out.buf.lock().unwrap_or_else(|e| e.into_inner());
            if n == 0 {
                b.closed_streams += 1;
                out.changed.notify_all();
                return;
            }
            b.bytes.extend_from_slice(&chunk[..n]);
            out.changed.notify_all();
        }
    })
}

/// A running gmond. Killed (SIGKILL) when dropped. If the dropping thread is
/// panicking (a failed `assert!`), gmond's output and config are printed and
/// the temp dir is kept, so plain asserts also come with the log.
pub struct Gmond {
    pid: u32,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    output: Arc<Output>,
    readers: Mutex<Vec<JoinHandle<()>>>,
    udp_port: u16,
    tcp_port: u16,
    conf: PathBuf,
    modules: PathBuf,
    confd: PathBuf,
    dir: TempDir,
}

impl Gmond {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    pub fn udp_port(&self) -> u16 {
        self.udp_port
    }

    /// The run's temp dir (gmond's cwd).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The python module dir given to modpython as `params`.
    pub fn modules_dir(&self) -> &Path {
        &self.modules
    }

    pub fn confd_dir(&self) -> &Path {
        &self.confd
    }

    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.conf).unwrap_or_default()
    }

    /// Everything gmond wrote to stdout and stderr so far (interleaved as read).
    pub fn log(&self) -> String {
        let b = self.output.buf.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&b.bytes).into_owned()
    }

    /// How many times `needle` occurs in the log so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until the log contains `needle`. Returns false on timeout.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut b = self.output.buf.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if String::from_utf8_lossy(&b.bytes).contains(needle) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || b.closed_streams >= 2 {
                return false;
            }
            b = self
                .output
                .changed
                .wait_timeout(b, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// How every host message names a module: `module 'x' (/path/x.py)`,
    /// for a module in this gmond's module directory.
    /// The number in `line` between `before` and `after`, e.g. the
    /// seconds in "within 2.0s;"; fails the test when there is none.
    #[track_caller]
    pub fn number_in(&self, line: &str, before: &str, after: &str) -> f64 {
        line.split_once(before)
            .and_then(|(_, rest)| rest.split_once(after))
            .and_then(|(n, _)| n.trim().parse().ok())
            .unwrap_or_else(|| {
                self.fail(&format!(
                    "no number between {before:?} and {after:?} in {line:?}"
                ))
            })
    }

    pub fn module_ref(&self, module: &str) -> String {
        format!(
            "module '{module}' ({})",
            self.modules_dir().join(format!("{module}.py")).display()
        )
    }

    /// Waits (up to `timeout`) for a log line containing every needle and
    /// returns it; fails with gmond's report on timeout or if gmond exits.
    #[track_caller]
    pub fn wait_line(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .log()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l.to_string();
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "no log line containing all of {needles:?} within {timeout:?}"
                ));
            }
            self.check(
                self.is_running(),
                &format!("gmond exited while waiting for {needles:?}"),
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to gmond.
    #[track_caller]
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(s) = self.try_status() {
            self.fail(&format!(
                "cannot send signal {sig}: gmond already exited ({s})"
            ));
        }
        let pid = libc::pid_t::try_from(self.pid).expect("pid fits pid_t");
        // SAFETY: kill(2) takes plain integers. The pid cannot have been reused:
        // only this struct reaps the child, and it has not done so yet.
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            self.fail(&format!(
                "kill({pid}, {sig}) failed: {}",
                io::Error::last_os_error()
            ));
        }
    }

    /// The exit status if gmond has exited (non-blocking).
    pub fn try_status(&self) -> Option<ExitStatus> {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if st.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(Some(s)) = child.try_wait() {
                *st = Some(s);
            }
        }
        *st
    }

    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// Waits for gmond to exit. On exit, also waits briefly for the output
    /// pipes to drain so `log()` is complete.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                self.drain_output(Duration::from_secs(2));
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    fn drain_output(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut b = self.output.buf.lock().unwrap_or_else(|e| e.into_inner());
        // A forked grandchild may hold the pipes open; do not wait for it forever.
        while b.closed_streams < 2 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            b = self
                .output
                .changed
                .wait_timeout(b, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(b);
        for h in self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = h.join();
        }
    }

    /// True once gmond accepts on its TCP port; false if it exited first or
    /// the timeout passed.
    fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.try_status().is_some() {
                self.drain_output(Duration::from_secs(2));
                return false;
            }
            if self.fetch_xml_text().is_ok() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL);
        }
    }

    fn fetch_xml_text(&self) -> io::Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.tcp_port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        // The XML server is a separate thread in gmond; even with the main
        // loop stuck in a handler it answers, so a long wait means trouble.
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut bytes = Vec::new();
        s.read_to_end(&mut bytes)?;
        Ok(decode(bytes))
    }

    /// Reads and parses gmond's XML once. Errors: not reachable, or not XML.
    pub fn try_xml(&self) -> Result<Xml, String> {
        let text = self
            .fetch_xml_text()
            .map_err(|e| format!("reading XML from 127.0.0.1:{}: {e}", self.tcp_port))?;
        Xml::parse(text)
    }

    /// Reads and parses gmond's XML; panics with the log attached on failure.
    #[track_caller]
    pub fn xml(&self) -> Xml {
        match self.try_xml() {
            Ok(x) => x,
            Err(e) => self.fail(&e),
        }
    }

    /// The metric as currently reported in the XML, if any.
    #[track_caller]
    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.xml().metric(name).cloned()
    }

    /// Polls the XML until `f` returns `Some`. Unreadable XML counts as "not
    /// yet" (gmond may still be starting). Panics with the log on timeout or
    /// when gmond exits.
    #[track_caller]
    pub fn wait_until<T>(&self, mut f: impl FnMut(&Xml) -> Option<T>, timeout: Duration) -> T {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.try_xml() {
                Ok(x) => {
                    if let Some(v) = f(&x) {
                        return v;
                    }
                    last = x.text;
                }
                Err(e) => last = e,
            }
            if let Some(s) = self.try_status() {
                self.drain_output(Duration::from_secs(2));
                self.fail(&format!("gmond exited ({s}) while waiting"));
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "condition not met within {timeout:?}; last XML:\n{last}"
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Checks that `holds` stays true for `duration`, for "must not appear"
    /// and "must not change" assertions (instead of a sleep and one look):
    /// reads the XML at once and every [`HOLD_POLL`] until `duration` has
    /// passed, the last read after it, and fails at the first read where
    /// `holds` is false, naming `what` and showing that XML. gmond exiting, or
    /// XML that cannot be read, fails too: neither shows the condition held.
    /// The caller says why `duration` is long enough (a named constant or a
    /// comment). Returns the last XML read.
    #[track_caller]
    pub fn hold_for(
        &self,
        duration: Duration,
        what: &str,
        mut holds: impl FnMut(&Xml) -> bool,
    ) -> Xml {
        let started = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                self.drain_output(Duration::from_secs(2));
                self.fail(&format!(
                    "gmond exited ({s}) {:?} into the {duration:?} that {what:?} must hold",
                    started.elapsed()
                ));
            }
            let x = self.try_xml().unwrap_or_else(|e| {
                self.fail(&format!(
                    "cannot check {what:?} {:?} into the {duration:?} it must hold: {e}",
                    started.elapsed()
                ))
            });
            if !holds(&x) {
                self.fail(&format!(
                    "{what:?} stopped holding {:?} into the {duration:?} it must hold; XML:\n{}",
                    started.elapsed(),
                    x.text
                ));
            }
            let elapsed = started.elapsed();
            if elapsed >= duration {
                return x;
            }
            thread::sleep(HOLD_POLL.min(duration - elapsed));
        }
    }

    /// Waits until `name` appears in the XML and returns it.
    #[track_caller]
    pub fn wait_metric(&self, name: &str, timeout: Duration) -> Metric {
        self.wait_until(|x| x.metric(name).cloned(), timeout)
    }

    /// Waits until `name` appears with a value satisfying `pred`.
    #[track_caller]
    pub fn wait_metric_where(
        &self,
        name: &str,
        mut pred: impl FnMut(&Metric) -> bool,
        timeout: Duration,
    ) -> Metric {
        self.wait_until(|x| x.metric(name).filter(|m| pred(m)).cloned(), timeout)
    }

    /// Panics with `msg`, gmond's config and its whole output.
    #[track_caller]
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.report());
    }

    /// Panics (with the log) unless `cond` holds.
    #[track_caller]
    pub fn check(&self, cond: bool, msg: &str) {
        if !cond {
            self.fail(msg);
        }
    }

    /// The config and output, formatted for a failure message.
    pub fn report(&self) -> String {
        let status = match self.try_status() {
            Some(s) => format!("exited: {s}"),
            None => "running".to_string(),
        };
        format!(
            "---- gmond pid {} ({status}), dir {} ----\n---- config ----\n{}---- output ----\n{}---- end ----",
            self.pid,
            self.dir.path().display(),
            self.config_text(),
            self.log(),
        )
    }
}

impl Drop for Gmond {
    fn drop(&mut self) {
        if thread::panicking() {
            // Reported before the kill, so the status shows whether gmond was
            // still alive when the test failed.
            self.dir.keep();
            eprintln!("{}", self.report());
        }
        if self.try_status().is_none() {
            let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `assert!` that attaches gmond's config and output to the panic message.
#[macro_export]
macro_rules! gmond_assert {
    ($g:expr, $cond:expr $(,)?) => {
        if !$cond {
            $g.fail(concat!("assertion failed: ", stringify!($cond)));
        }
    };
    ($g:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            $g.fail(&format!($($arg)+));
        }
    };
}

/// `assert_eq!` that attaches gmond's config and output to the panic message.
#[macro_export]
macro_rules! gmond_assert_eq {
    ($g:expr, $left:expr, $right:expr $(,)?) => {
        match (&$left, &$right) {
            (l, r) => {
                if !(*l == *r) {
                    $g.fail(&format!(
                        "assertion `left == right` failed: {} == {}\n  left: {:?}\n right: {:?}",
                        stringify!($left),
                        stringify!($right),
                        l,
                        r
                    ));
                }
            }
        }
    };
    ($g:expr, $left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if !(*l == *r) {
                    $g.fail(&format!(
                        "{}\n  left: {:?}\n right: {:?}",
                        format!($($arg)+),
                        l,
                        r
                    ));
                }
            }
        }
    };
}

// ---------------------------------------------------------------------------
// XML
// ---------------------------------------------------------------------------

/// One `<METRIC>` element.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: String,
    pub val: String,
    pub type_: String,
    pub units: String,
    pub slope: String,
    pub tn: u64,
    pub tmax: u64,
    pub dmax: u64,
    /// EXTRA_ELEMENT NAME/VAL pairs in document order (GROUP, DESC, TITLE, ...).
    pub extra: Vec<(String, String)>,
    /// The HOST this metric was reported under.
    pub host: String,
}

impl Metric {
    /// The first EXTRA_ELEMENT named `key` (exact match).
    pub fn extra(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every EXTRA_ELEMENT named `key`, e.g. all GROUP entries.
    pub fn extras(&self, key: &str) -> Vec<&str> {
        self.extra
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// VAL as a number; panics if it is not one.
    pub fn val_f64(&self) -> f64 {
        self.val.trim().parse().unwrap_or_else(|e| {
            panic!(
                "metric {} VAL {:?} is not a number: {e}",
                self.name, self.val
            )
        })
    }
}

/// One `<HOST>` element.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ip: String,
    pub reported: u64,
    pub tn: u64,
    pub attrs: HashMap<String, String>,
    pub metrics: Vec<Metric>,
}

/// A parsed gmond XML dump.
#[derive(Clone, Debug)]
pub struct Xml {
    /// The document as read (decoded; see [`decode`]).
    pub text: String,
    pub hosts: Vec<Host>,
}

impl Xml {
    /// Parses gmond's XML. Its DOCTYPE carries an internal DTD, which
    /// roxmltree rejects unless `allow_dtd` is set.
    pub fn parse(text: String) -> Result<Xml, String> {
        let opts = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let hosts = {
            let doc = roxmltree::Document::parse_with_options(&text, opts)
                .map_err(|e| format!("gmond XML does not parse: {e}\n{text}"))?;
            doc.descendants()
                .filter(|n| n.has_tag_name("HOST"))
                .map(|h| {
                    let host_name = h.attribute("NAME").unwrap_or_default().to_string();
                    Host {
                        ip: h.attribute("IP").unwrap_or_default().to_string(),
                        reported: num_attr(h, "REPORTED"),
                        tn: num_attr(h, "TN"),
                        attrs: h
                            .attributes()
                            .map(|a| (a.name().to_string(), a.value().to_string()))
                            .collect(),
                        metrics: h
                            .children()
                            .filter(|m| m.has_tag_name("METRIC"))
                            .map(|m| parse_metric(m, &host_name))
                            .collect(),
                        name: host_name,
                    }
                })
                .collect()
        };
        Ok(Xml { text, hosts })
    }

    /// All metrics of all hosts.
    pub fn metrics(&self) -> impl Iterator<Item = &Metric> {
        self.hosts.iter().flat_map(|h| h.metrics.iter())
    }

    /// The first metric called `name` (on any host).
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics().find(|m| m.name == name)
    }

    pub fn metric_names(&self) -> Vec<&str> {
        self.metrics().map(|m| m.name.as_str()).collect()
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

fn num_attr(n: roxmltree::Node, key: &str) -> u64 {
    n.attribute(key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn parse_metric(m: roxmltree::Node, host: &str) -> Metric {
    let attr = |k: &str| m.attribute(k).unwrap_or_default().to_string();
    Metric {
        name: attr("NAME"),
        val: attr("VAL"),
        type_: attr("TYPE"),
        units: attr("UNITS"),
        slope: attr("SLOPE"),
        tn: num_attr(m, "TN"),
        tmax: num_attr(m, "TMAX"),
        dmax: num_attr(m, "DMAX"),
        extra: m
            .descendants()
            .filter(|e| e.has_tag_name("EXTRA_ELEMENT"))
            .map(|e| {
                (
                    e.attribute("NAME").unwrap_or_default().to_string(),
                    e.attribute("VAL").unwrap_or_default().to_string(),
                )
            })
            .collect(),
        host: host.to_string(),
    }
}

/// gmond declares ISO-8859-1 but copies metric strings through byte for byte,
/// so a Python module's UTF-8 text arrives as UTF-8. Decode as UTF-8 when it
/// is valid (what tests want to compare against), else as Latin-1 (what the
/// declaration says), so parsing never fails on encoding alone.
pub fn decode(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => e.into_bytes().iter().map(|&b| char::from(b)).collect(),
    }
}

/// modpython.so and the module program, copied together into a directory
/// every user can read: after a SIGHUP re-exec gmond, now its `setuid`
/// user, loads the .so again and starts module processes from beside it,
/// and a checkout under a 0700 `/root` (a fresh CI machine's) is out of
/// its reach. Returns the directory (removed on drop) and the .so's path,
/// for [`GmondBuilder::so_path`].
pub fn host_readable_by_all() -> (TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    };
    mode(dir.path(), 0o755);
    let so = dir.path().join("modpython.so");
    std::fs::copy(modpython_so(), &so).expect("copy modpython.so");
    mode(&so, 0o755);
    let helper = dir.path().join("modpython-module");
    std::fs::copy(env!("CARGO_BIN_EXE_modpython-module"), &helper).expect("copy modpython-module");
    mode(&helper, 0o755);
    (dir, so)
}

// ---------------------------------------------------------------------------
// Small std-only helpers
// ---------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop unless kept.
/// `MODPYTHON_KEEP_TEST_DIRS=1` keeps every one.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "modpython-test-{}-{}-{nanos:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let keep = std::env::var_os("MODPYTHON_KEEP_TEST_DIRS").is_some_and(|v| v != "0");
        TempDir { path, keep }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn mkdir(p: &Path) {
    std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

fn write(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// Copies the contents of `src` into `dst`, skipping bytecode caches (stale
/// ones from a developer's run must not shadow the sources under test).
pub fn copy_tree(src: &Path, dst: &Path) {
    let entries =
        std::fs::read_dir(src).unwrap_or_else(|e| panic!("read_dir {}: {e}", src.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("read_dir {}: {e}", src.display()));
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let from = entry.path();
        let to = dst.join(&name);
        if from.is_dir() {
            mkdir(&to);
            copy_tree(&from, &to);
        } else {
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        }
    }
}

/// Makes `path` and everything under it readable (dirs also searchable)
/// by everyone, without making anything writable by others.
fn readable_by_all(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    let mode = meta.permissions().mode() & 0o7777;
    let wanted = if meta.is_dir() {
        (mode | 0o755) & !0o022
    } else {
        (mode | 0o644) & !0o022
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    if meta.is_dir() {
        for entry in
            std::fs::read_dir(path).unwrap_or_else(|e| panic!("read_dir {}: {e}", path.display()))
        {
            let entry = entry.unwrap_or_else(|e| panic!("read_dir {}: {e}", path.display()));
            readable_by_all(&entry.path());
        }
    }
}

/// A loopback UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind a UDP port on 127.0.0.1")
}

/// A loopback TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind a TCP port on 127.0.0.1")
}

/// Shorthand for timeouts in tests.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
