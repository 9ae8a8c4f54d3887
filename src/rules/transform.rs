//! jq transformations: compiled once with jaq, run under a time budget on a
//! small pool of big-stack worker threads.
//!
//! # How the budget is enforced
//!
//! jaq has no fuel or interrupt hook, but every step of its interpreter asks
//! the run's global data for the program's lookup table
//! ([`HasLut::lut`]). Our data type ([`Guard`]) counts those calls and, every
//! [`TICKS_PER_CHECK`] steps, compares the clock with the run's deadline; when
//! the budget is spent it unwinds out of the interpreter with
//! [`std::panic::resume_unwind`] (no panic hook, no message), caught by
//! [`std::panic::catch_unwind`] around the run. jaq is `forbid(unsafe_code)`,
//! so unwinding through it only drops its values. The one native generator
//! that loops without calling back into the interpreter, `range/3`, is
//! replaced by a copy that checks the same guard on every output. This stops
//! `def f: f; f`, `[range(1e12)]`, `last(range(1e12))`, `until(false; .)` and
//! friends within a few microseconds of the budget.
//!
//! The same guard measures stack depth (address of a local against the
//! worker's base) and unwinds past [`STACK_GUARD`], so non-tail recursion
//! (`def f: 1 + f; f`) ends with an error instead of overflowing the stack,
//! which would abort the whole process.
//!
//! A few natives can still run long without an interpreter step (`..` over a
//! value nested thousands deep, `sort` of a huge array, `"x" * 1e9`). For
//! those the caller does not wait forever: it gives up after the budget plus
//! [`BACKSTOP_GRACE`], reports the delivery as failed, and writes the worker
//! off: a fresh worker replaces it at once so later transformations are not
//! starved, and the runaway thread exits on its own as soon as its native
//! call returns (its result is dropped). At most [`MAX_RUNAWAY`] written-off
//! threads may be alive at once; past that, jobs wait in the queue and fail
//! after `RuleOptions::transform_queue_timeout` rather than spawning threads
//! without bound. What no budget can stop is a single allocation far larger
//! than memory: `"x" * 1000000000000` makes jaq ask for 1 TB at once, and
//! Rust aborts the process on allocation failure (measured). Programs are
//! written by holders of the admin key, so this is an operator mistake, not
//! an attack surface; operators are told not to multiply strings by
//! unbounded numbers. (`.[1e12] = 1` is safe: jaq refuses the index.)
//!
//! Requires unwinding panics: building with `panic = "abort"` would turn a
//! budget overrun into a process abort, so it is refused at compile time.
//!
//! # Sandbox
//!
//! `env` and `$ENV` yield `{}` (transformations must not read the server's
//! secrets out of its environment), `stderr` writes nothing, `halt` and
//! `halt_error` end the run with an error (never the process), `input`,
//! `inputs` and module imports are not available, and `fromjson` parses with
//! serde_json's nesting limit.

#[cfg(panic = "abort")]
compile_error!("event-router's jq budget needs panic = \"unwind\": see src/rules/transform.rs");

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use jaq_core::data::{DataT, HasLut};
use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::native::{self, Fun};
use jaq_core::{Compiler, Ctx, Exn, Lut, Vars};
use jaq_json::{Num, Val};
use serde_json::{Map, Value};

/// Interpreter steps between two clock reads (about 10-40 µs of work).
pub const TICKS_PER_CHECK: u32 = 128;
/// Stack of each transformation worker. Only touched pages cost memory.
pub const WORKER_STACK: usize = 64 << 20;
/// Stack depth at which a run is stopped. The rest of [`WORKER_STACK`] is
/// headroom for natives that recurse without interpreter steps (`tojson`,
/// dropping a deeply nested value, `..`).
pub const STACK_GUARD: usize = 16 << 20;
/// Stack for compiling: jaq's parser is recursive descent. Only touched
/// pages cost memory.
pub const COMPILE_STACK: usize = 256 << 20;
/// Longest accepted program text. With [`MAX_NESTING`] it keeps the parser's
/// recursion well inside [`COMPILE_STACK`] (measured: 30k nested parentheses
/// overflow 64 MiB, 1.6k nested `. as $x |` need a few MiB).
pub const MAX_EXPRESSION_BYTES: usize = 16 * 1024;
/// Deepest bracket nesting accepted in a program.
pub const MAX_NESTING: usize = 256;
/// How long past its budget the caller waits for a worker that is stuck in a
/// native call before writing it off.
pub const BACKSTOP_GRACE: Duration = Duration::from_millis(25);
/// Written-off workers allowed to be still running at once.
pub const MAX_RUNAWAY: usize = 4;
/// Deepest output accepted (the event itself is at most ~130 levels deep).
const MAX_OUTPUT_DEPTH: usize = 256;
/// Longest error text passed on (jq errors can embed whole values).
const MAX_ERROR_CHARS: usize = 500;

/// A compiled jq program. Immutable, `Send + Sync`, shared by every run.
pub struct JqProgram {
    filter: jaq_core::Filter<Budgeted>,
    expression: Box<str>,
}

impl fmt::Debug for JqProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JqProgram")
            .field("expression", &self.expression)
            .finish_non_exhaustive()
    }
}

impl JqProgram {
    pub fn expression(&self) -> &str {
        &self.expression
    }
}

/// Why a program did not compile, with a 1-based position in its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JqCompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for JqCompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "jq compile error at line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for JqCompileError {}

/// Why one run of a program produced no event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    #[error("transformation exceeded its time budget of {} ms", .0.as_millis())]
    Budget(Duration),
    #[error("transformation recursed too deeply")]
    TooDeep,
    #[error("transformation waited more than {} ms for a free worker", .0.as_millis())]
    Saturated(Duration),
    #[error("jq error: {0}")]
    Jq(String),
    #[error("transformation must yield exactly one object, got {0}")]
    Output(String),
    #[error("transformation failed: {0}")]
    Internal(String),
}

/// Compiles a jq program with jq's standard definitions.
///
/// Runs on a short-lived thread with a large stack because jaq's parser
/// recurses once per nesting level of the program text.
pub fn compile(expression: &str) -> Result<JqProgram, JqCompileError> {
    if expression.len() > MAX_EXPRESSION_BYTES {
        return Err(JqCompileError {
            line: 1,
            column: 1,
            message: format!("program is longer than {MAX_EXPRESSION_BYTES} bytes"),
        });
    }
    check_nesting(expression)?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("jq-compile".into())
            .stack_size(COMPILE_STACK)
            .spawn_scoped(scope, || compile_here(expression));
        match handle {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                Err(JqCompileError {
                    line: 1,
                    column: 1,
                    message: "the jq compiler crashed on this program".into(),
                })
            }),
            Err(e) => Err(JqCompileError {
                line: 1,
                column: 1,
                message: format!("cannot start the jq compiler: {e}"),
            }),
        }
    })
}

/// Refuses programs whose brackets nest deeper than [`MAX_NESTING`] before
/// the recursive parser sees them. Skips string literals (following `\(`
/// interpolations back into code) and comments; unbalanced brackets are left
/// for the parser to report.
fn check_nesting(code: &str) -> Result<(), JqCompileError> {
    enum Ctx {
        Bracket,
        Interpolation,
    }
    let mut stack: Vec<Ctx> = Vec::new();
    let mut in_string = false;
    let mut chars = code.char_indices();
    while let Some((i, c)) = chars.next() {
        if in_string {
            match c {
                '"' => in_string = false,
                '\\' => {
                    if let Some((_, '(')) = chars.next() {
                        stack.push(Ctx::Interpolation);
                        in_string = false;
                    }
                }
                _ => {}
            }
        } else {
            match c {
                '"' => in_string = true,
                '#' => {
                    for (_, c) in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                '(' | '[' | '{' => stack.push(Ctx::Bracket),
                ')' | ']' | '}' => {
                    if let Some(Ctx::Interpolation) = stack.pop() {
                        in_string = true;
                    }
                }
                _ => {}
            }
        }
        if stack.len() > MAX_NESTING {
            return Err(at(
                code,
                code.get(i..).unwrap_or(""),
                format!("brackets nest deeper than {MAX_NESTING} levels"),
            ));
        }
    }
    Ok(())
}

fn compile_here(expression: &str) -> Result<JqProgram, JqCompileError> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let file = File {
        code: expression,
        path: (),
    };
    let modules = loader
        .load(&arena, file)
        .map_err(|errs| load_error(expression, errs))?;
    let filter = Compiler::<_, Budgeted>::default()
        .with_funs(natives())
        .with_global_vars(["$ENV"])
        .compile(modules)
        .map_err(|errs| undefined_error(expression, errs))?;
    Ok(JqProgram {
        filter,
        expression: expression.into(),
    })
}

/// The natives of jq's standard library, less the ones that reach outside
/// the run (see the module docs), plus budget-aware replacements.
fn natives() -> impl Iterator<Item = Fun<Budgeted>> {
    const REPLACED: [&str; 4] = ["range", "env", "stderr_empty", "fromjson"];
    jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, _, _)| !REPLACED.contains(name))
        .chain([
            native::run::<Budgeted>(("range", native::v(3), range)),
            native::run::<Budgeted>(("env", native::v(0), |_| native::bome(Ok(empty_object())))),
            native::run::<Budgeted>(("stderr_empty", native::v(0), |_| {
                Box::new(std::iter::empty())
            })),
            native::run::<Budgeted>(("fromjson", native::v(0), fromjson)),
        ])
}

type BoxedOutputs<'a> = jaq_core::ValXs<'a, Val>;

/// `range($from; $to; $by)`, checking the budget on every output.
fn range(mut cv: jaq_core::Cv<'_, Budgeted>) -> BoxedOutputs<'_> {
    use std::cmp::Ordering::{Greater, Less};
    let by = cv.0.pop_var();
    let to = cv.0.pop_var();
    let from = cv.0.pop_var();
    let guard: &Guard = cv.0.data();
    let direction = by.partial_cmp(&Val::from(0isize));
    let mut next = Some(from);
    Box::new(std::iter::from_fn(move || {
        guard.tick();
        let x = next.take()?;
        let more = match direction {
            Some(Greater) => x < to,
            Some(Less) => x > to,
            _ => x != to,
        };
        if !more {
            return None;
        }
        match x.clone() + by.clone() {
            Ok(y) => next = Some(y),
            Err(e) => return Some(Err(Exn::from(e))),
        }
        Some(Ok(x))
    }))
}

/// `fromjson` through serde_json, whose nesting limit keeps the parser's
/// recursion bounded (jaq's own parser has none).
fn fromjson(cv: jaq_core::Cv<'_, Budgeted>) -> BoxedOutputs<'_> {
    let parsed = match &cv.1 {
        Val::TStr(s) | Val::BStr(s) => serde_json::from_slice::<Value>(s)
            .map(|v| json_to_val(&v))
            .map_err(|e| jaq_core::Error::str(format_args!("cannot parse JSON: {e}"))),
        other => Err(jaq_core::Error::str(format_args!(
            "{other} cannot be parsed as JSON"
        ))),
    };
    native::bome(parsed)
}

fn empty_object() -> Val {
    Val::obj(jaq_json::Map::default())
}

/// jaq data type whose global data is the run's [`Guard`].
pub struct Budgeted;

impl DataT for Budgeted {
    type V<'a> = Val;
    type Data<'a> = &'a Guard<'a>;
}

/// Per-run budget state, consulted at every interpreter step.
pub struct Guard<'a> {
    lut: &'a Lut<Budgeted>,
    deadline: Instant,
    budget: Duration,
    ticks: Cell<u32>,
    stack_base: usize,
}

/// Payload of the unwind that stops a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    Budget,
    TooDeep,
}

impl Guard<'_> {
    #[inline]
    fn tick(&self) {
        let ticks = self.ticks.get().wrapping_add(1);
        self.ticks.set(ticks);
        if ticks.is_multiple_of(TICKS_PER_CHECK) {
            self.check_slow();
        }
    }

    #[cold]
    fn check_slow(&self) {
        if Instant::now() >= self.deadline {
            resume_unwind(Box::new(Interrupt::Budget));
        }
    }

    #[inline]
    fn check_stack(&self) {
        // The stack grows down on every target we build for; a wrapping
        // difference keeps this panic-free should that ever not hold.
        let here = 0u8;
        let depth = self
            .stack_base
            .wrapping_sub(std::ptr::addr_of!(here) as usize);
        if depth > STACK_GUARD {
            resume_unwind(Box::new(Interrupt::TooDeep));
        }
    }
}

impl<'a> HasLut<'a, Budgeted> for &'a Guard<'a> {
    #[inline]
    fn lut(&self) -> &'a Lut<Budgeted> {
        self.tick();
        self.check_stack();
        self.lut
    }
}

/// Runs `program` on `input` on the current thread, within `budget`.
///
/// Must be called near the base of a thread with a stack of at least
/// [`WORKER_STACK`] (the pool's workers), since [`STACK_GUARD`] is measured
/// from here.
fn execute(program: &JqProgram, input: &Value, budget: Duration) -> Result<Value, TransformError> {
    let base_marker = 0u8;
    let guard = Guard {
        lut: &program.filter.lut,
        deadline: Instant::now() + budget,
        budget,
        ticks: Cell::new(0),
        stack_base: std::ptr::addr_of!(base_marker) as usize,
    };
    // Everything jaq allocates is created and dropped inside the closure, so
    // an unwind cannot leave a half-updated value observable outside it.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let ctx = Ctx::<Budgeted>::new(&guard, Vars::new([empty_object()]));
        let mut outputs = program.filter.id.run((ctx, json_to_val(input)));
        let first = outputs.next();
        let second = outputs.next();
        match (first, second) {
            (None, _) => Err(TransformError::Output("no output".into())),
            (Some(_), Some(Ok(_))) => Err(TransformError::Output("more than one output".into())),
            (Some(_), Some(Err(e))) | (Some(Err(e)), None) => Err(exception(e)),
            (Some(Ok(v)), None) => match v {
                Val::Obj(_) => val_to_json(&v, 0),
                other => Err(TransformError::Output(describe(&other).into())),
            },
        }
    }));
    match outcome {
        Ok(result) => result,
        Err(payload) => Err(match payload.downcast_ref::<Interrupt>() {
            Some(Interrupt::Budget) => TransformError::Budget(guard.budget),
            Some(Interrupt::TooDeep) => TransformError::TooDeep,
            None => TransformError::Internal(panic_message(&*payload)),
        }),
    }
}

fn exception(e: Exn<'_, Val>) -> TransformError {
    match e.get_err() {
        // `error("boom")` reads as `boom`, like jq prints it.
        Ok(err) => TransformError::Jq(truncate(match err.into_val() {
            Val::TStr(s) | Val::BStr(s) => String::from_utf8_lossy(&s).into_owned(),
            other => other.to_string(),
        })),
        // Never `unwrap_valr`: it exits the process on `halt`.
        Err(exn) => match exn.get_halt() {
            Ok(code) => TransformError::Jq(format!("program halted with exit code {code}")),
            Err(_) => TransformError::Internal("unexpected jq control flow".into()),
        },
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "jaq panicked".into());
    truncate(text)
}

fn truncate(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_ERROR_CHARS) {
        s.truncate(i);
        s.push('…');
    }
    s
}

fn describe(v: &Val) -> &'static str {
    match v {
        Val::Null => "null",
        Val::Bool(_) => "a boolean",
        Val::Num(_) => "a number",
        Val::TStr(_) | Val::BStr(_) => "a string",
        Val::Arr(_) => "an array",
        Val::Obj(_) => "an object",
    }
}

/// serde_json -> jaq, keeping integers as integers.
pub fn json_to_val(v: &Value) -> Val {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => Val::Num(if let Some(i) = n.as_i64() {
            Num::from_integral(i)
        } else if let Some(u) = n.as_u64() {
            Num::from_integral(u)
        } else {
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }),
        Value::String(s) => Val::utf8_str(s.clone().into_bytes()),
        Value::Array(a) => a.iter().map(json_to_val).collect(),
        Value::Object(o) => Val::obj(
            o.iter()
                .map(|(k, v)| (Val::utf8_str(k.clone().into_bytes()), json_to_val(v)))
                .collect(),
        ),
    }
}

/// jaq -> serde_json. Integers stay integers, floats stay floats (NaN becomes
/// null and infinities the largest finite numbers, as jq prints them).
pub fn val_to_json(v: &Val, depth: usize) -> Result<Value, TransformError> {
    if depth > MAX_OUTPUT_DEPTH {
        return Err(TransformError::Output(format!(
            "a value nested deeper than {MAX_OUTPUT_DEPTH} levels"
        )));
    }
    Ok(match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => num_to_json(n),
        Val::TStr(s) | Val::BStr(s) => Value::String(String::from_utf8_lossy(s).into_owned()),
        Val::Arr(a) => Value::Array(
            a.iter()
                .map(|x| val_to_json(x, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Val::Obj(o) => {
            let mut map = Map::new();
            for (k, x) in o.iter() {
                let key = match k {
                    Val::TStr(s) | Val::BStr(s) => String::from_utf8_lossy(s).into_owned(),
                    other => other.to_string(),
                };
                map.insert(key, val_to_json(x, depth + 1)?);
            }
            Value::Object(map)
        }
    })
}

fn num_to_json(n: &Num) -> Value {
    match n {
        Num::Int(i) => Value::from(*i as i64),
        Num::Float(f) => float_to_json(*f),
        // Big integers and decimal literals keep their text when it is an
        // integer serde_json can hold, else become the nearest float.
        Num::BigInt(_) | Num::Dec(_) => {
            let text = n.to_string();
            if let Ok(i) = text.parse::<i64>() {
                Value::from(i)
            } else if let Ok(u) = text.parse::<u64>() {
                Value::from(u)
            } else {
                text.parse::<f64>().map_or(Value::Null, float_to_json)
            }
        }
    }
}

fn float_to_json(f: f64) -> Value {
    let f = if f == f64::INFINITY {
        f64::MAX
    } else if f == f64::NEG_INFINITY {
        f64::MIN
    } else {
        f
    };
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn position(code: &str, part: &str) -> (usize, usize) {
    let base = code.as_ptr() as usize;
    let start = part.as_ptr() as usize;
    // Errors point into the program text, except those about the built-in
    // definitions, which we report at the start.
    let offset = if start >= base && start + part.len() <= base + code.len() {
        start - base
    } else {
        0
    };
    let before = code.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn at(code: &str, part: &str, message: String) -> JqCompileError {
    let (line, column) = position(code, part);
    JqCompileError {
        line,
        column,
        message,
    }
}

fn load_error(code: &str, errs: load::Errors<&str, ()>) -> JqCompileError {
    use jaq_core::load::Error;
    for (_file, err) in errs {
        match err {
            Error::Lex(lex) => {
                if let Some((expect, found)) = lex.into_iter().next() {
                    return at(code, found, format!("expected {}", lex_expect(&expect)));
                }
            }
            Error::Parse(parse) => {
                if let Some((expect, found)) = parse.into_iter().next() {
                    let found_text = if found.is_empty() {
                        "end of program".to_string()
                    } else {
                        format!("{found:?}")
                    };
                    return at(
                        code,
                        found,
                        format!("expected {}, found {found_text}", expect.as_str()),
                    );
                }
            }
            Error::Io(io) => {
                if let Some((path, msg)) = io.into_iter().next() {
                    return at(code, path, format!("cannot import {path:?}: {msg}"));
                }
            }
        }
    }
    JqCompileError {
        line: 1,
        column: 1,
        message: "invalid program".into(),
    }
}

fn lex_expect(e: &load::lex::Expect<&str>) -> &'static str {
    use jaq_core::load::lex::Expect;
    // Not `Expect::as_str`: it panics on delimiters it does not know.
    match e {
        Expect::Digit => "digit",
        Expect::Ident => "identifier",
        Expect::Delim("(") => "closing parenthesis",
        Expect::Delim("[") => "closing bracket",
        Expect::Delim("{") => "closing brace",
        Expect::Delim("\"") => "closing quote",
        Expect::Delim(_) => "closing delimiter",
        Expect::Escape => "string escape sequence",
        Expect::Unicode => "4-digit hexadecimal code point",
        Expect::Token => "token",
        _ => "valid token",
    }
}

fn undefined_error(code: &str, errs: jaq_core::compile::Errors<&str, ()>) -> JqCompileError {
    use jaq_core::compile::Undefined;
    for (_file, list) in errs {
        if let Some((name, undefined)) = list.into_iter().next() {
            let what = match undefined {
                Undefined::Mod => format!("undefined module {name}"),
                Undefined::Var => format!("undefined variable {name}"),
                Undefined::Label => format!("undefined label {name}"),
                Undefined::Filter(arity) => format!("undefined filter {name}/{arity}"),
                _ => format!("undefined symbol {name}"),
            };
            return at(code, name, what);
        }
    }
    JqCompileError {
        line: 1,
        column: 1,
        message: "invalid program".into(),
    }
}

/// Runs transformations on dedicated worker threads (see the module docs).
///
/// Owned by one `RuleSet`; dropping it lets idle workers exit. Workers are
/// started on first use, so a rule set without transformations costs nothing.
pub struct TransformPool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<PoolState>,
    work: Condvar,
    workers: usize,
    budget: Duration,
    queue_timeout: Duration,
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Arc<Job>>,
    idle: usize,
    live: usize,
    written_off: usize,
    shutdown: bool,
    spawned: usize,
}

struct Job {
    program: Arc<JqProgram>,
    /// Taken by the worker, and released before it publishes the result so
    /// that the caller can usually reclaim the value without copying it.
    input: Mutex<Option<Arc<Value>>>,
    slot: Mutex<Slot>,
    done: Condvar,
}

enum Slot {
    Queued,
    Running(Instant),
    Done(Result<Value, TransformError>),
    Abandoned,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code panics while holding these locks; if one ever did, the state
    // it guards is still consistent (plain counters and queues).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TransformPool {
    pub fn new(workers: usize, budget: Duration, queue_timeout: Duration) -> Self {
        TransformPool {
            shared: Arc::new(Shared {
                state: Mutex::new(PoolState::default()),
                work: Condvar::new(),
                workers: workers.max(1),
                budget,
                queue_timeout,
            }),
        }
    }

    pub fn budget(&self) -> Duration {
        self.shared.budget
    }

    /// Runs `program` on `input` and waits for its single object output.
    ///
    /// Blocks the calling thread for at most about budget + grace once the
    /// job has started, and at most the queue timeout before it starts.
    pub fn run(
        &self,
        program: &Arc<JqProgram>,
        input: Arc<Value>,
    ) -> Result<Value, TransformError> {
        let shared = &self.shared;
        let job = Arc::new(Job {
            program: Arc::clone(program),
            input: Mutex::new(Some(input)),
            slot: Mutex::new(Slot::Queued),
            done: Condvar::new(),
        });
        {
            let mut st = lock(&shared.state);
            st.queue.push_back(Arc::clone(&job));
            if st.idle == 0 && st.live < shared.workers {
                spawn_worker(shared, &mut st);
            }
            if st.live == 0 {
                st.queue.retain(|j| !Arc::ptr_eq(j, &job));
                return Err(TransformError::Internal(
                    "cannot start a transformation worker".into(),
                ));
            }
            shared.work.notify_one();
        }
        let queued_at = Instant::now();
        let mut slot = lock(&job.slot);
        loop {
            let now = Instant::now();
            let wait_until = match &*slot {
                Slot::Done(_) => {
                    return match std::mem::replace(&mut *slot, Slot::Abandoned) {
                        Slot::Done(result) => result,
                        _ => Err(TransformError::Internal("lost result".into())),
                    };
                }
                Slot::Queued => {
                    let limit = queued_at + shared.queue_timeout;
                    if now >= limit {
                        *slot = Slot::Abandoned;
                        // The job stays queued until a worker skips it; let
                        // go of the event now.
                        lock(&job.input).take();
                        return Err(TransformError::Saturated(shared.queue_timeout));
                    }
                    limit
                }
                Slot::Running(started) => {
                    let limit = *started + shared.budget + BACKSTOP_GRACE;
                    if now >= limit {
                        *slot = Slot::Abandoned;
                        drop(slot);
                        self.write_off();
                        return Err(TransformError::Budget(shared.budget));
                    }
                    limit
                }
                Slot::Abandoned => return Err(TransformError::Internal("job abandoned".into())),
            };
            slot = job
                .done
                .wait_timeout(slot, wait_until.saturating_duration_since(now))
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Counts a worker stuck past its budget out of the pool and starts a
    /// replacement, so queued and later jobs keep flowing.
    fn write_off(&self) {
        let shared = &self.shared;
        let mut st = lock(&shared.state);
        st.live = st.live.saturating_sub(1);
        st.written_off += 1;
        if !st.queue.is_empty() && st.live < shared.workers {
            spawn_worker(shared, &mut st);
            shared.work.notify_one();
        }
    }

    #[cfg(test)]
    pub(crate) fn live_workers(&self) -> (usize, usize) {
        let st = lock(&self.shared.state);
        (st.live, st.written_off)
    }
}

impl Drop for TransformPool {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        st.shutdown = true;
        self.shared.work.notify_all();
    }
}

fn spawn_worker(shared: &Arc<Shared>, st: &mut PoolState) {
    if st.written_off >= MAX_RUNAWAY {
        return;
    }
    st.spawned += 1;
    let me = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("jq-transform-{}", st.spawned))
        .stack_size(WORKER_STACK)
        .spawn(move || worker(&me));
    if spawned.is_ok() {
        st.live += 1;
    }
}

fn worker(shared: &Shared) {
    loop {
        let job = {
            let mut st = lock(&shared.state);
            loop {
                if let Some(job) = st.queue.pop_front() {
                    break job;
                }
                if st.shutdown {
                    st.live = st.live.saturating_sub(1);
                    return;
                }
                st.idle += 1;
                st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                st.idle -= 1;
            }
        };
        {
            let mut slot = lock(&job.slot);
            if !matches!(*slot, Slot::Queued) {
                // The caller stopped waiting while the job was queued.
                continue;
            }
            *slot = Slot::Running(Instant::now());
            // The caller's wait deadline changes from the queue timeout to
            // the run's budget.
            job.done.notify_one();
        }
        let input = lock(&job.input).take();
        let result = match input {
            Some(input) => execute(&job.program, &input, shared.budget),
            None => Err(TransformError::Internal("job without input".into())),
        };
        let mut slot = lock(&job.slot);
        if matches!(*slot, Slot::Abandoned) {
            // The caller gave up on this run and already replaced this
            // worker: leave the pool.
            drop(slot);
            let mut st = lock(&shared.state);
            st.written_off = st.written_off.saturating_sub(1);
            return;
        }
        *slot = Slot::Done(result);
        job.done.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(budget_ms: u64) -> TransformPool {
        TransformPool::new(2, Duration::from_millis(budget_ms), Duration::from_secs(5))
    }

    fn run(expr: &str, input: Value) -> Result<Value, TransformError> {
        let program = Arc::new(compile(expr).expect("compiles"));
        // Generous: these tests are about results, not the budget.
        pool(2000).run(&program, Arc::new(input))
    }

    #[test]
    fn program_is_send_sync() {
        fn assert<T: Send + Sync>() {}
        assert::<JqProgram>();
        assert::<TransformPool>();
    }

    #[test]
    fn runs_and_preserves_integers() {
        let out = run(
            "{a: .x, b: (.x + 1), c: (.y * 2), d: 1.5, big: 18446744073709551615, f: 3.0}",
            json!({"x": 41, "y": 2.5}),
        )
        .unwrap();
        assert_eq!(out["a"], json!(41));
        assert!(out["a"].is_i64());
        assert_eq!(out["b"], json!(42));
        assert!(out["b"].is_i64());
        assert_eq!(out["c"], json!(5.0));
        assert_eq!(out["d"], json!(1.5));
        assert_eq!(out["big"], json!(18446744073709551615u64));
        assert_eq!(out["f"], json!(3.0));
    }

    #[test]
    fn roundtrips_values() {
        let v = json!({"s": "é\u{1F600}", "n": null, "t": true, "a": [1, -2, 3.25, "x"],
                       "o": {"k": [], "m": {}}, "min": -9223372036854775808i64});
        assert_eq!(val_to_json(&json_to_val(&v), 0).unwrap(), v);
    }

    #[test]
    fn output_must_be_one_object() {
        let cases = [
            (".a", "got null"),
            ("1", "got a number"),
            ("empty", "got no output"),
            (".,.", "got more than one output"),
            ("[.]", "got an array"),
            ("\"s\"", "got a string"),
        ];
        for (expr, msg) in cases {
            let err = run(expr, json!({})).unwrap_err().to_string();
            assert!(
                err.starts_with("transformation must yield exactly one object"),
                "{expr}: {err}"
            );
            assert!(err.ends_with(msg), "{expr}: {err}");
        }
    }

    #[test]
    fn runtime_errors_are_reported() {
        let err = run("error(\"boom\")", json!({})).unwrap_err();
        assert_eq!(err, TransformError::Jq("boom".into()));
        let err = run(".a + 1", json!({"a": "x"})).unwrap_err();
        assert!(matches!(err, TransformError::Jq(_)), "{err}");
        let err = run("halt_error", json!({})).unwrap_err();
        assert!(err.to_string().contains("halted"), "{err}");
    }

    #[test]
    fn environment_is_hidden() {
        let out = run("{e: env, v: $ENV}", json!({})).unwrap();
        assert_eq!(out, json!({"e": {}, "v": {}}));
    }

    #[test]
    fn fromjson_is_bounded() {
        let out = run("{v: (\"[1,{\\\"a\\\":2}]\" | fromjson)}", json!({})).unwrap();
        assert_eq!(out, json!({"v": [1, {"a": 2}]}));
        let err = run("{v: (\"[\" * 100000 | fromjson)}", json!({})).unwrap_err();
        assert!(err.to_string().contains("cannot parse JSON"), "{err}");
    }

    #[test]
    fn std_library_is_available() {
        let out = run(
            "{n: (.xs | map(. * 2) | add), s: (.s | ascii_downcase | test(\"^ab\")), k: (.o | keys), t: (.s | ltrimstr(\"A\"))}",
            json!({"xs": [1, 2, 3], "s": "ABC", "o": {"b": 1, "a": 2}}),
        )
        .unwrap();
        assert_eq!(out, json!({"n": 12, "s": true, "k": ["a", "b"], "t": "BC"}));
    }

    #[test]
    fn compile_errors_have_positions() {
        let e = compile(".a |").unwrap_err();
        assert_eq!((e.line, e.column), (1, 5), "{e}");
        assert!(
            e.to_string()
                .starts_with("jq compile error at line 1, column 5: expected term"),
            "{e}"
        );

        let e = compile("{a: 1,\n  b: nosuchfn(1)}").unwrap_err();
        assert_eq!((e.line, e.column), (2, 6), "{e}");
        assert!(e.message.contains("undefined filter nosuchfn/1"), "{e}");

        let e = compile(".a | $nope").unwrap_err();
        assert_eq!((e.line, e.column), (1, 6), "{e}");
        assert!(e.message.contains("undefined variable $nope"), "{e}");

        let e = compile("\"abc").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        assert!(e.message.contains("closing quote"), "{e}");

        let e = compile("import \"x\" as x; .").unwrap_err();
        assert!(e.message.contains("cannot import"), "{e}");

        let e = compile(&"x".repeat(MAX_EXPRESSION_BYTES + 1)).unwrap_err();
        assert!(e.message.contains("longer than"), "{e}");
    }

    #[test]
    fn deeply_nested_programs_do_not_crash_the_compiler() {
        let n = MAX_NESTING + 1;
        let e = compile(&format!("{}.{}", "(".repeat(n), ")".repeat(n))).unwrap_err();
        assert!(e.message.contains("nest deeper"), "{e}");
        let e = compile(&format!("{}1{}", "[".repeat(n), "]".repeat(n))).unwrap_err();
        assert!(e.message.contains("nest deeper"), "{e}");
        // Brackets inside strings and comments do not count; interpolations do.
        let ok = format!(
            "\"{}\" # {}\n| {{a: \"\\(.x)\"}}",
            "(".repeat(n),
            "[".repeat(n)
        );
        compile(&ok).unwrap();
        let e = compile(&format!("\"{}.{}\"", "\\(".repeat(n), ")".repeat(n))).unwrap_err();
        assert!(e.message.contains("nest deeper"), "{e}");
        // Constructs that nest without brackets, as long as the size limit
        // allows: the process must survive, whatever the outcome.
        let max = MAX_EXPRESSION_BYTES;
        for (unit, tail) in [
            ("if . then ", " else . end"),
            (". as $x | ", ""),
            ("def f: ", " f;"),
            ("- ", ""),
            ("try ", ""),
            (". | ", ""),
            ("1 + ", ""),
            ("reduce . as $x (.; ", ")"),
        ] {
            let n = max / (unit.len() + tail.len()) - 1;
            let program = format!("{}.{}", unit.repeat(n), tail.repeat(n));
            let _ = compile(&program);
        }
    }

    fn assert_stopped(expr: &str, budget_ms: u64) {
        let program = Arc::new(compile(expr).expect("compiles"));
        let pool = pool(budget_ms);
        let started = Instant::now();
        let err = pool.run(&program, Arc::new(json!({"a": 1}))).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(err, TransformError::Budget(_) | TransformError::TooDeep),
            "{expr}: {err}"
        );
        assert!(
            // Slack for a loaded machine; unbounded would be hours.
            took < Duration::from_millis(budget_ms) + BACKSTOP_GRACE + Duration::from_millis(1000),
            "{expr} took {took:?}"
        );
    }

    #[test]
    fn runaway_programs_stop_within_budget() {
        for expr in [
            "def f: f; f",
            "[range(1e12)]",
            "last(range(1e12))",
            "reduce range(1e12) as $x (0; . + $x)",
            "[limit(1e12; repeat(1))]",
            "until(false; .)",
            ".a | [recurse(. + 1)]",
            "def f: 1 + f; f",
            "def f: [f]; f",
        ] {
            assert_stopped(expr, 50);
        }
    }

    #[test]
    fn budget_error_text() {
        let program = Arc::new(compile("def f: f; f").unwrap());
        let err = pool(50).run(&program, Arc::new(json!({}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "transformation exceeded its time budget of 50 ms"
        );
    }

    #[test]
    fn stuck_native_is_written_off_and_replaced() {
        // A pathological regex runs inside one native call (no interpreter
        // steps), for far longer than the 5 ms budget.
        let program = Arc::new(compile(r#"{a: ("a" * 2000000 | test("(a|b|c|d|e)*x"))}"#).unwrap());
        let pool = TransformPool::new(1, Duration::from_millis(5), Duration::from_secs(5));
        let started = Instant::now();
        let result = pool.run(&program, Arc::new(json!({})));
        let took = started.elapsed();
        assert_eq!(
            result,
            Err(TransformError::Budget(Duration::from_millis(5)))
        );
        assert!(took < Duration::from_millis(1000), "took {took:?}");
        // Written off (and possibly already gone).
        assert!(matches!(pool.live_workers(), (0, 1) | (0, 0)));
        // The next job is served by a replacement worker, at once.
        let quick = Arc::new(compile("{ok: true}").unwrap());
        let started = Instant::now();
        assert_eq!(
            pool.run(&quick, Arc::new(json!({}))).unwrap(),
            json!({"ok": true})
        );
        assert!(started.elapsed() < Duration::from_millis(1000));
        assert_eq!(pool.live_workers().0, 1);
    }

    #[test]
    fn pool_survives_many_runs_and_concurrency() {
        let program = Arc::new(compile("{n: (.n + 1)}").unwrap());
        let pool = Arc::new(pool(2000));
        std::thread::scope(|s| {
            for t in 0..4 {
                let pool = Arc::clone(&pool);
                let program = Arc::clone(&program);
                s.spawn(move || {
                    for i in 0..50 {
                        let out = pool
                            .run(&program, Arc::new(json!({"n": t * 1000 + i})))
                            .unwrap();
                        assert_eq!(out, json!({"n": t * 1000 + i + 1}));
                    }
                });
            }
        });
        let (live, written_off) = pool.live_workers();
        assert!(live <= 2 && written_off == 0, "{live} {written_off}");
    }
}
