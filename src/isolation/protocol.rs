//! What gmond and a module process say to each other over their socket:
//! length-prefixed frames of a small binary encoding. One frame carries a
//! whole batch of calls and one carries all their outcomes, so a round
//! costs one round trip per module however many metrics it has
//! (docs/performance.md has the figures).
//!
//! A frame is `u32` length (little-endian, of what follows), a kind byte
//! and the kind's fields. Strings are `u32` length and UTF-8 bytes.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::descriptor::{MetricDescriptor, ValueType};
use crate::gmond_config::{ModuleBlock, Origin, Param};
use crate::python::loader::{Diagnostic, ModuleRef};
use crate::settings::{HostSettings, ModuleStdout};
use crate::value::Value;

/// A frame larger than this is taken for a broken stream, not allocated
/// (10,000 descriptors take ~3 MB).
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Changed whenever a frame's layout changes: modpython.so and
/// modpython-module must come from the same build (after an upgrade, the
/// running gmond's old modpython.so may start the new program).
pub const VERSION: u32 = 1;

/// Items made room for up front when a frame gives its count: a count is
/// only known to fit the frame's bytes, and a forged one must not make
/// gmond ask for gigabytes (an allocation failure aborts the process).
const PREALLOCATE_MAX: usize = 16 * 1024;

/// A buffer grown past this by a large frame is given back once empty.
const KEEP_BUFFER: usize = 1024 * 1024;

/// Everything a module process needs to load its module as the host would.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// gmond's process: the module process ends when it is no longer its parent.
    pub parent_pid: u32,
    pub dir: PathBuf,
    pub module: ModuleRef,
    pub block: ModuleBlock,
    pub settings: HostSettings,
    pub trusted_uids: Vec<u32>,
    pub debug_level: i32,
    /// Become this user (uid, gid) before any module code runs.
    pub user: Option<(u32, u32)>,
    /// Become this user right after `metric_init`, as gmond does after its
    /// `init` (`globals { setuid user }`).
    pub then_user: Option<(u32, u32)>,
    /// RLIMIT_DATA for the process, in bytes.
    pub memory_limit: Option<u64>,
}

/// gmond → module process.
#[derive(Debug, Clone)]
pub enum ToChild {
    Start(Box<StartRequest>),
    /// Call these metrics (positions in the module's `Loaded` list) in order.
    Calls {
        seq: u32,
        timed: bool,
        positions: Vec<u32>,
    },
    /// gmond dropped its privileges: do the same before the next call.
    BecomeUser {
        uid: u32,
        gid: u32,
    },
    /// Run `metric_cleanup()` and exit.
    Cleanup,
}

/// The outcome of one call, as it crosses the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum WireOutcome {
    Value(Value),
    Raised { summary: String, detail: String },
    Conversion(String),
}

/// Module process → gmond.
#[derive(Debug, Clone)]
pub enum FromChild {
    /// A log line (`module_output`: a module's own output, which gmond's
    /// log shows at every debug level).
    Log {
        level: log::Level,
        module_output: bool,
        text: String,
    },
    /// A problem found while loading, as the in-process loader reports it.
    Diagnostic(Diagnostic),
    Loaded {
        descriptors: Vec<MetricDescriptor>,
    },
    LoadFailed {
        message: String,
    },
    /// The outcomes of a `Calls` frame, in its order, each with its run
    /// time when the calls were timed.
    Results {
        seq: u32,
        outcomes: Vec<(WireOutcome, f32)>,
    },
    CleanedUp,
}

// ----- encoding -------------------------------------------------------------

#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn f32(&mut self, v: f32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }
    fn path(&mut self, p: &std::path::Path) {
        self.str(&p.to_string_lossy());
    }
    fn strs<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a str>) {
        self.u32(items.len() as u32);
        for s in items {
            self.str(s);
        }
    }

    /// Starts a frame of `kind`; [`Encoder::finish`] fills in its length.
    fn begin(&mut self, kind: u8) -> usize {
        let at = self.buf.len();
        self.u32(0);
        self.u8(kind);
        at
    }

    fn finish(&mut self, at: usize) {
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// The frames encoded so far, and a fresh start.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Str(s) => {
                self.u8(0);
                self.str(s);
            }
            Value::Uint(x) => {
                self.u8(1);
                self.u32(*x);
            }
            Value::Int(x) => {
                self.u8(2);
                self.u32(*x as u32);
            }
            Value::Float(x) => {
                self.u8(3);
                self.f32(*x);
            }
            Value::Double(x) => {
                self.u8(4);
                self.f64(*x);
            }
        }
    }

    fn diagnostic(&mut self, d: &Diagnostic) {
        self.u8(d.level as u8);
        match &d.module {
            Some(m) => {
                self.u8(1);
                self.str(&m.name);
                self.path(&m.path);
            }
            None => self.u8(0),
        }
        self.opt_str(d.metric.as_deref());
        self.str(&d.message);
    }

    fn descriptor(&mut self, d: &MetricDescriptor) {
        self.str(&d.name);
        self.u8(d.value_type as u8);
        self.u32(d.time_max as u32);
        self.str(&d.units);
        self.str(&d.slope);
        self.str(&d.format);
        self.str(&d.description);
        self.strs(d.groups.iter().map(String::as_str));
        self.u32(d.extra.len() as u32);
        for (k, v) in &d.extra {
            self.str(k);
            self.str(v);
        }
        self.str(&d.callback_key);
    }

    fn start(&mut self, r: &StartRequest) {
        self.u32(VERSION);
        self.u32(r.parent_pid);
        self.path(&r.dir);
        self.str(&r.module.name);
        self.path(&r.module.path);
        let b = &r.block;
        self.opt_str(b.name.as_deref());
        self.opt_str(b.language.as_deref());
        self.u8(b.enabled as u8);
        self.opt_str(b.path.as_deref());
        self.u32(b.params.len() as u32);
        for p in &b.params {
            self.str(&p.name);
            self.opt_str(p.value.as_deref());
        }
        match &b.origin {
            Some(o) => {
                self.u8(1);
                self.path(&o.file);
                self.u64(o.line as u64);
            }
            None => self.u8(0),
        }
        let s = &r.settings;
        self.u8(s.strict_permissions as u8);
        self.u32(s.python_path.len() as u32);
        for p in &s.python_path {
            self.path(p);
        }
        match &s.virtualenv {
            Some(v) => {
                self.u8(1);
                self.path(v);
            }
            None => self.u8(0),
        }
        self.f64(s.init_timeout.as_secs_f64());
        self.u8((s.module_stdout == ModuleStdout::Discard) as u8);
        self.u32(r.trusted_uids.len() as u32);
        for uid in &r.trusted_uids {
            self.u32(*uid);
        }
        self.u32(r.debug_level as u32);
        match r.user {
            Some((uid, gid)) => {
                self.u8(1);
                self.u32(uid);
                self.u32(gid);
            }
            None => self.u8(0),
        }
        match r.then_user {
            Some((uid, gid)) => {
                self.u8(1);
                self.u32(uid);
                self.u32(gid);
            }
            None => self.u8(0),
        }
        match r.memory_limit {
            Some(bytes) => {
                self.u8(1);
                self.u64(bytes);
            }
            None => self.u8(0),
        }
    }

    pub fn to_child(&mut self, m: &ToChild) {
        match m {
            ToChild::Start(r) => {
                let at = self.begin(1);
                self.start(r);
                self.finish(at);
            }
            ToChild::Calls {
                seq,
                timed,
                positions,
            } => self.calls(*seq, *timed, positions),
            ToChild::BecomeUser { uid, gid } => {
                let at = self.begin(3);
                self.u32(*uid);
                self.u32(*gid);
                self.finish(at);
            }
            ToChild::Cleanup => {
                let at = self.begin(4);
                self.finish(at);
            }
        }
    }

    /// A `Calls` frame, without building a [`ToChild`] (gmond's path).
    pub fn calls(&mut self, seq: u32, timed: bool, positions: &[u32]) {
        let at = self.begin(2);
        self.u32(seq);
        self.u8(timed as u8);
        self.u32(positions.len() as u32);
        for p in positions {
            self.u32(*p);
        }
        self.finish(at);
    }

    pub fn from_child(&mut self, m: &FromChild) {
        match m {
            FromChild::Log {
                level,
                module_output,
                text,
            } => {
                let at = self.begin(10);
                self.u8(*level as u8);
                self.u8(*module_output as u8);
                self.str(text);
                self.finish(at);
            }
            FromChild::Diagnostic(d) => {
                let at = self.begin(11);
                self.diagnostic(d);
                self.finish(at);
            }
            FromChild::Loaded { descriptors } => {
                let at = self.begin(12);
                self.u32(descriptors.len() as u32);
                for d in descriptors {
                    self.descriptor(d);
                }
                self.finish(at);
            }
            FromChild::LoadFailed { message } => {
                let at = self.begin(13);
                self.str(message);
                self.finish(at);
            }
            FromChild::Results { seq, outcomes } => {
                let at = self.results_begin(*seq, outcomes.len());
                for (o, s) in outcomes {
                    self.outcome(o, *s);
                }
                self.finish(at);
            }
            FromChild::CleanedUp => {
                let at = self.begin(15);
                self.finish(at);
            }
        }
    }

    /// Starts a `Results` frame of `count` outcomes, added one by one with
    /// [`Encoder::outcome`] and closed with [`Encoder::results_end`]
    /// (the module process's path: no list of outcomes is built).
    pub fn results_begin(&mut self, seq: u32, count: usize) -> usize {
        let at = self.begin(14);
        self.u32(seq);
        self.u32(count as u32);
        at
    }

    pub fn outcome(&mut self, o: &WireOutcome, seconds: f32) {
        match o {
            WireOutcome::Value(v) => {
                self.u8(0);
                self.value(v);
            }
            WireOutcome::Raised { summary, detail } => {
                self.u8(1);
                self.str(summary);
                self.str(detail);
            }
            WireOutcome::Conversion(why) => {
                self.u8(2);
                self.str(why);
            }
        }
        self.f32(seconds);
    }

    pub fn results_end(&mut self, at: usize) {
        self.finish(at);
    }
}

// ----- decoding -------------------------------------------------------------

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed frame: {what}"),
    )
}

pub struct Decoder<'a> {
    data: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.data.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }
    fn f32(&mut self) -> io::Result<f32> {
        Ok(f32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }
    fn f64(&mut self) -> io::Result<f64> {
        Ok(f64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }
    fn str(&mut self) -> io::Result<String> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("text is not UTF-8"))
    }
    fn opt_str(&mut self) -> io::Result<Option<String>> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some(self.str()?),
        })
    }
    fn path(&mut self) -> io::Result<PathBuf> {
        Ok(PathBuf::from(self.str()?))
    }
    fn count(&mut self) -> io::Result<usize> {
        let n = self.u32()? as usize;
        // Each item takes at least a byte: a larger count is a lie.
        if n > self.data.len() {
            return Err(bad("count beyond the frame"));
        }
        Ok(n)
    }
    fn level(&mut self) -> io::Result<log::Level> {
        Ok(match self.u8()? {
            1 => log::Level::Error,
            2 => log::Level::Warn,
            3 => log::Level::Info,
            4 => log::Level::Debug,
            _ => log::Level::Trace,
        })
    }

    fn value(&mut self) -> io::Result<Value> {
        Ok(match self.u8()? {
            0 => Value::Str(self.str()?),
            1 => Value::Uint(self.u32()?),
            2 => Value::Int(self.u32()? as i32),
            3 => Value::Float(self.f32()?),
            4 => Value::Double(self.f64()?),
            _ => return Err(bad("value kind")),
        })
    }

    fn outcome(&mut self) -> io::Result<(WireOutcome, f32)> {
        let outcome = match self.u8()? {
            0 => WireOutcome::Value(self.value()?),
            1 => WireOutcome::Raised {
                summary: self.str()?,
                detail: self.str()?,
            },
            2 => WireOutcome::Conversion(self.str()?),
            _ => return Err(bad("outcome kind")),
        };
        Ok((outcome, self.f32()?))
    }

    fn descriptor(&mut self) -> io::Result<MetricDescriptor> {
        let name = self.str()?;
        let value_type = value_type_of(self.u8()?).ok_or_else(|| bad("value type"))?;
        let time_max = self.u32()? as i32;
        let units = self.str()?;
        let slope = self.str()?;
        let format = self.str()?;
        let description = self.str()?;
        let mut groups = Vec::new();
        for _ in 0..self.count()? {
            groups.push(self.str()?);
        }
        let mut extra = Vec::new();
        for _ in 0..self.count()? {
            extra.push((self.str()?, self.str()?));
        }
        Ok(MetricDescriptor {
            name,
            value_type,
            time_max,
            units,
            slope,
            format,
            description,
            groups,
            extra,
            callback_key: self.str()?,
        })
    }

    fn start(&mut self) -> io::Result<StartRequest> {
        let version = self.u32()?;
        if version != VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("gmond speaks protocol version {version}, this program version {VERSION}"),
            ));
        }
        let parent_pid = self.u32()?;
        let dir = self.path()?;
        let module = ModuleRef {
            name: self.str()?,
            path: self.path()?,
        };
        let name = self.opt_str()?;
        let language = self.opt_str()?;
        let enabled = self.u8()? != 0;
        let path = self.opt_str()?;
        let mut params = Vec::new();
        for _ in 0..self.count()? {
            params.push(Param {
                name: self.str()?,
                value: self.opt_str()?,
            });
        }
        let origin = match self.u8()? {
            0 => None,
            _ => Some(Origin {
                file: self.path()?,
                line: self.u64()? as usize,
            }),
        };
        let block = ModuleBlock {
            name,
            language,
            enabled,
            path,
            params,
            origin,
        };
        let mut settings = HostSettings {
            strict_permissions: self.u8()? != 0,
            ..HostSettings::default()
        };
        for _ in 0..self.count()? {
            settings.python_path.push(self.path()?);
        }
        settings.virtualenv = match self.u8()? {
            0 => None,
            _ => Some(self.path()?),
        };
        settings.init_timeout = Duration::from_secs_f64(self.f64()?.clamp(0.001, 86_400.0));
        settings.module_stdout = if self.u8()? != 0 {
            ModuleStdout::Discard
        } else {
            ModuleStdout::Log
        };
        let mut trusted_uids = Vec::new();
        for _ in 0..self.count()? {
            trusted_uids.push(self.u32()?);
        }
        let debug_level = self.u32()? as i32;
        let user = match self.u8()? {
            0 => None,
            _ => Some((self.u32()?, self.u32()?)),
        };
        let then_user = match self.u8()? {
            0 => None,
            _ => Some((self.u32()?, self.u32()?)),
        };
        let memory_limit = match self.u8()? {
            0 => None,
            _ => Some(self.u64()?),
        };
        Ok(StartRequest {
            parent_pid,
            dir,
            module,
            block,
            settings,
            trusted_uids,
            debug_level,
            user,
            then_user,
            memory_limit,
        })
    }

    pub fn to_child(&mut self, kind: u8) -> io::Result<ToChild> {
        Ok(match kind {
            1 => ToChild::Start(Box::new(self.start()?)),
            2 => {
                let seq = self.u32()?;
                let timed = self.u8()? != 0;
                let n = self.count()?;
                let mut positions = Vec::with_capacity(n.min(PREALLOCATE_MAX));
                for _ in 0..n {
                    positions.push(self.u32()?);
                }
                ToChild::Calls {
                    seq,
                    timed,
                    positions,
                }
            }
            3 => ToChild::BecomeUser {
                uid: self.u32()?,
                gid: self.u32()?,
            },
            4 => ToChild::Cleanup,
            _ => return Err(bad("unknown request")),
        })
    }

    pub fn from_child(&mut self, kind: u8) -> io::Result<FromChild> {
        Ok(match kind {
            10 => FromChild::Log {
                level: self.level()?,
                module_output: self.u8()? != 0,
                text: self.str()?,
            },
            11 => {
                let level = self.level()?;
                let module = match self.u8()? {
                    0 => None,
                    _ => Some(ModuleRef {
                        name: self.str()?,
                        path: self.path()?,
                    }),
                };
                FromChild::Diagnostic(Diagnostic {
                    level,
                    module,
                    metric: self.opt_str()?,
                    message: self.str()?,
                })
            }
            12 => {
                let n = self.count()?;
                let mut descriptors = Vec::with_capacity(n.min(PREALLOCATE_MAX));
                for _ in 0..n {
                    descriptors.push(self.descriptor()?);
                }
                FromChild::Loaded { descriptors }
            }
            13 => FromChild::LoadFailed {
                message: self.str()?,
            },
            14 => {
                let seq = self.u32()?;
                let n = self.count()?;
                let mut outcomes = Vec::with_capacity(n.min(PREALLOCATE_MAX));
                for _ in 0..n {
                    outcomes.push(self.outcome()?);
                }
                FromChild::Results { seq, outcomes }
            }
            15 => FromChild::CleanedUp,
            _ => return Err(bad("unknown reply")),
        })
    }
}

fn value_type_of(byte: u8) -> Option<ValueType> {
    [
        ValueType::String,
        ValueType::Uint,
        ValueType::Int,
        ValueType::Float,
        ValueType::Double,
    ]
    .into_iter()
    .find(|t| *t as u8 == byte)
}

/// Frames read off a stream: bytes are appended as they come, and whole
/// frames taken off the front.
#[derive(Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
}

impl FrameBuffer {
    /// Reads what `source` has (one read). `Ok(0)` is the end of the stream.
    pub fn fill(&mut self, source: &mut impl Read) -> io::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > KEEP_BUFFER {
                self.buf.shrink_to(64 * 1024);
            }
        } else if self.start >= 64 * 1024 {
            // Frames keep coming and the buffer is never empty: what was
            // read already goes, or the buffer grows without end.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + 64 * 1024, 0);
        let result = source.read(&mut self.buf[len..]);
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(len + n);
        result
    }

    /// Whether part of a frame has arrived and the rest has not.
    pub fn mid_frame(&self) -> bool {
        self.start < self.buf.len()
    }

    /// The next whole frame, as its kind and a decoder of its fields.
    pub fn next_frame(&mut self) -> io::Result<Option<(u8, Decoder<'_>)>> {
        let pending = &self.buf[self.start..];
        if pending.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if !(1..=MAX_FRAME).contains(&len) {
            return Err(bad("frame length"));
        }
        if pending.len() < 4 + len {
            return Ok(None);
        }
        let kind = pending[4];
        let begin = self.start + 5;
        self.start += 4 + len;
        Ok(Some((
            kind,
            Decoder {
                data: &self.buf[begin..self.start],
            },
        )))
    }
}

/// Writes all of `bytes` (a blocking stream).
pub fn send(sink: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    sink.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_from_child(m: &FromChild) -> FromChild {
        let mut e = Encoder::default();
        e.from_child(m);
        let bytes = e.take();
        let mut fb = FrameBuffer::default();
        fb.fill(&mut &bytes[..]).unwrap();
        let (kind, mut d) = fb.next_frame().unwrap().unwrap();
        let out = d.from_child(kind).unwrap();
        assert!(fb.next_frame().unwrap().is_none());
        out
    }

    #[test]
    fn results_survive_the_trip() {
        let outcomes = vec![
            (WireOutcome::Value(Value::Uint(7)), 0.5),
            (WireOutcome::Value(Value::Int(-3)), 0.0),
            (WireOutcome::Value(Value::Str("é x".into())), 0.0),
            (WireOutcome::Value(Value::Double(2.5)), 0.0),
            (
                WireOutcome::Raised {
                    summary: "ValueError: x".into(),
                    detail: "Traceback…".into(),
                },
                0.1,
            ),
            (WireOutcome::Conversion("not a number".into()), 0.0),
        ];
        match round_trip_from_child(&FromChild::Results {
            seq: 9,
            outcomes: outcomes.clone(),
        }) {
            FromChild::Results { seq, outcomes: got } => {
                assert_eq!(seq, 9);
                assert_eq!(got, outcomes);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn descriptors_and_start_survive_the_trip() {
        let d = MetricDescriptor {
            name: "m".into(),
            value_type: ValueType::Float,
            time_max: 90,
            units: "u".into(),
            slope: "both".into(),
            format: "%.1f".into(),
            description: "d".into(),
            groups: vec!["a".into(), "b".into()],
            extra: vec![("k".into(), "v".into())],
            callback_key: "call_back".into(),
        };
        match round_trip_from_child(&FromChild::Loaded {
            descriptors: vec![d.clone()],
        }) {
            FromChild::Loaded { descriptors } => assert_eq!(descriptors, vec![d]),
            other => panic!("{other:?}"),
        }
        let request = StartRequest {
            parent_pid: 42,
            dir: "/m".into(),
            module: ModuleRef {
                name: "x".into(),
                path: "/m/x.py".into(),
            },
            block: ModuleBlock {
                name: Some("x".into()),
                language: Some("python".into()),
                enabled: true,
                path: None,
                params: vec![Param {
                    name: "p".into(),
                    value: None,
                }],
                origin: Some(Origin {
                    file: "/etc/x.pyconf".into(),
                    line: 3,
                }),
            },
            settings: HostSettings::default(),
            trusted_uids: vec![0, 5],
            debug_level: 2,
            user: Some((7, 8)),
            then_user: Some((9, 10)),
            memory_limit: Some(1 << 30),
        };
        let mut e = Encoder::default();
        e.to_child(&ToChild::Start(Box::new(request.clone())));
        let bytes = e.take();
        let mut fb = FrameBuffer::default();
        fb.fill(&mut &bytes[..]).unwrap();
        let (kind, mut dec) = fb.next_frame().unwrap().unwrap();
        match dec.to_child(kind).unwrap() {
            ToChild::Start(got) => {
                assert_eq!(got.block, request.block);
                assert_eq!(got.trusted_uids, request.trusted_uids);
                assert_eq!(got.user, request.user);
                assert_eq!(got.then_user, request.then_user);
                assert_eq!(got.memory_limit, request.memory_limit);
                assert_eq!(got.settings.init_timeout, request.settings.init_timeout);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest() {
        let mut e = Encoder::default();
        e.calls(1, false, &[1, 2, 3]);
        let bytes = e.take();
        let mut fb = FrameBuffer::default();
        assert!(!fb.mid_frame());
        fb.fill(&mut &bytes[..5]).unwrap();
        assert!(fb.next_frame().unwrap().is_none());
        assert!(fb.mid_frame());
        fb.fill(&mut &bytes[5..]).unwrap();
        let (kind, mut d) = fb.next_frame().unwrap().unwrap();
        assert!(
            matches!(d.to_child(kind).unwrap(), ToChild::Calls { positions, .. } if positions == [1, 2, 3])
        );
        assert!(!fb.mid_frame());
    }

    #[test]
    fn a_steady_stream_does_not_grow_the_buffer() {
        let mut e = Encoder::default();
        e.calls(1, false, &[7; 100]);
        let frame = e.take();
        let mut fb = FrameBuffer::default();
        // Each read brings one whole frame and the start of the next, so
        // the buffer is never empty when the next read comes.
        let stream = frame.repeat(2_000);
        let mut read = 0;
        let mut frames = 0;
        while read < stream.len() {
            let take = (frame.len() + 7).min(stream.len() - read);
            fb.fill(&mut &stream[read..read + take]).unwrap();
            read += take;
            while fb.next_frame().unwrap().is_some() {
                frames += 1;
            }
            assert!(fb.buf.len() < 256 * 1024, "buffer at {}", fb.buf.len());
        }
        assert_eq!(frames, 2_000);
    }

    #[test]
    fn garbage_after_a_plausible_count_is_an_error() {
        // A Results frame claiming as many outcomes as it has bytes, with
        // none of them well formed.
        let mut body = vec![14u8];
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&60_000u32.to_le_bytes());
        body.resize(60_010, 0xff);
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        let mut fb = FrameBuffer::default();
        fb.fill(&mut &frame[..]).unwrap();
        let (kind, mut d) = fb.next_frame().unwrap().unwrap();
        assert!(d.from_child(kind).is_err());
    }
}
