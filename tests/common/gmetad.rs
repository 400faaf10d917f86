//! Runs Debian's `/usr/sbin/gmetad` in the foreground for cluster tests.
//!
//! Include it next to the harness with
//! `mod common; #[path = "common/gmetad.rs"] mod gmetad;`.
//! gmetad gets its own temp dir (config, `rrds/`, log), free XML and
//! interactive ports, `setuid off`, and polls the given gmond TCP ports.
#![allow(dead_code)]

use crate::common::{TempDir, Xml, decode, free_tcp_port};
use std::fmt::Write as _;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The gmetad binary; `GMETAD` overrides it.
pub const DEFAULT_GMETAD: &str = "/usr/sbin/gmetad";

pub struct Gmetad {
    child: Child,
    pub xml_port: u16,
    pub interactive_port: u16,
    conf: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl Gmetad {
    /// Starts gmetad polling each `(name, gmond tcp port)` on 127.0.0.1 every
    /// `step` seconds, and waits until its XML port answers.
    pub fn start(sources: &[(&str, u16)], step: u32) -> Gmetad {
        let bin = std::env::var_os("GMETAD")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_GMETAD));
        assert!(
            bin.is_file(),
            "{} is missing: install Debian's gmetad package (scripts/setup does)",
            bin.display()
        );
        let mut last_log = String::new();
        for _ in 0..4 {
            let dir = TempDir::new();
            let rrds = dir.path().join("rrds");
            std::fs::create_dir_all(&rrds).expect("mkdir rrds");
            let xml_port = free_tcp_port();
            let interactive_port = free_tcp_port();
            let mut c = String::new();
            for (name, port) in sources {
                let _ = writeln!(c, "data_source \"{name}\" {step} 127.0.0.1:{port}");
            }
            let _ = write!(
                c,
                "gridname \"modpython-grid\"\n\
                 xml_port {xml_port}\n\
                 interactive_port {interactive_port}\n\
                 trusted_hosts 127.0.0.1\n\
                 setuid off\n\
                 rrd_rootdir \"{}\"\n\
                 case_sensitive_hostnames 1\n",
                rrds.display()
            );
            let conf = dir.path().join("gmetad.conf");
            std::fs::write(&conf, &c).expect("write gmetad.conf");
            let log = dir.path().join("gmetad.log");
            let out = std::fs::File::create(&log).expect("create gmetad.log");
            let err = out.try_clone().expect("dup log fd");
            // -d 1: stay in the foreground (and log a little).
            let child = Command::new(&bin)
                .arg("-d")
                .arg("1")
                .arg("-c")
                .arg(&conf)
                .current_dir(dir.path())
                .env_clear()
                .env("PATH", crate::common::DEFAULT_PATH)
                .env("LANG", "C.UTF-8")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let mut g = Gmetad {
                child,
                xml_port,
                interactive_port,
                conf,
                log,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if g.fetch().is_ok() {
                    return g;
                }
                if let Ok(Some(_)) = g.child.try_wait() {
                    break;
                }
                if Instant::now() >= deadline {
                    g.fail("gmetad did not answer on its XML port within 15 s");
                }
                thread::sleep(Duration::from_millis(100));
            }
            // Exited: most likely a port taken between probe and bind. Retry.
            last_log = g.log();
        }
        panic!("gmetad failed to start 4 times; last log:\n{last_log}");
    }

    fn fetch(&self) -> std::io::Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.xml_port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut bytes = Vec::new();
        s.read_to_end(&mut bytes)?;
        Ok(decode(bytes))
    }

    /// gmetad's whole XML (GRID > CLUSTER > HOST > METRIC).
    pub fn try_xml(&self) -> Result<Xml, String> {
        let text = self
            .fetch()
            .map_err(|e| format!("reading gmetad XML from port {}: {e}", self.xml_port))?;
        Xml::parse(text)
    }

    /// Polls the XML until `f` returns `Some`; panics with the log on timeout.
    #[track_caller]
    pub fn wait_until<T>(&mut self, mut f: impl FnMut(&Xml) -> Option<T>, timeout: Duration) -> T {
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
            if let Ok(Some(s)) = self.child.try_wait() {
                self.fail(&format!("gmetad exited ({s}) while waiting"));
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "gmetad: condition not met within {timeout:?}; last XML:\n{last}"
                ));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    #[track_caller]
    pub fn fail(&mut self, msg: &str) -> ! {
        self.dir.keep();
        panic!(
            "{msg}\n---- gmetad dir {} ----\n---- config ----\n{}---- log (tail) ----\n{}---- end ----",
            self.dir.path().display(),
            std::fs::read_to_string(&self.conf).unwrap_or_default(),
            tail(&self.log(), 60),
        );
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = lines[start..].join("\n");
    out.push('\n');
    out
}

impl Drop for Gmetad {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dir.keep();
            eprintln!(
                "---- gmetad dir {} (kept), log tail ----\n{}",
                self.dir.path().display(),
                tail(&self.log(), 60)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
