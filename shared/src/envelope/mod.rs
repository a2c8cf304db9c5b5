//! Typed envelopes for the eight message types (PROTOCOL.md §5).
//!
//! Decoding is `tlv::decode` → [`schema::validate`] → typed decode; each stage has its own
//! error variants. Encoders write known fields in edgectl's order (so a Go peer's frames
//! re-encode identically) and then every field this type does not consume — unknown ids and
//! later duplicates — in their original order.

pub mod schema;

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Serialize, Serializer};

use crate::error::WireError;
use crate::wire::tlv::{id, Field, Fields};
use crate::wire::Frame;
pub use schema::mt;

/// Command arguments: a JSON object of string → string, keys sorted.
pub type Args = BTreeMap<String, String>;

/// Compact JSON with sorted keys. (Go additionally escapes `<>&`; both decode the same.)
pub fn encode_args(args: &Args) -> Bytes {
    // Serialising a map of strings cannot fail; fall back to an empty object regardless.
    Bytes::from(serde_json::to_vec(args).unwrap_or_else(|_| b"{}".to_vec()))
}

pub fn decode_args(field_id: u16, raw: &[u8]) -> Result<Args, WireError> {
    // `null` decodes to an empty map, as in edgectl.
    serde_json::from_slice::<Option<Args>>(raw)
        .map(Option::unwrap_or_default)
        .map_err(|e| WireError::BadArgs {
            field_id,
            reason: e.to_string(),
        })
}

macro_rules! vocab {
    ($(#[$m:meta])* $name:ident, $fid:expr, { $($var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
        pub enum $name { $(#[serde(rename = $s)] $var),+ }
        impl $name {
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $s),+ } }
            pub fn parse(s: &str) -> Result<Self, WireError> {
                match s {
                    $($s => Ok($name::$var),)+
                    other => Err(WireError::BadValue {
                        field_id: $fid,
                        reason: format!(
                            concat!(stringify!($name), " must be one of [", $($s, " ",)+ "], got {:?}"),
                            other
                        ),
                    }),
                }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

vocab!(Outcome, id::OUTCOME, { Success = "success", Error = "error" });
vocab!(AckStatus, id::ACK_STATUS, { Accepted = "accepted", Rejected = "rejected" });
vocab!(Phase, id::PHASE, { InProgress = "in_progress", Complete = "complete" });
vocab!(
    /// `corrective` is ours: drift found and a corrective command issued.
    CompletionState, id::COMPLETION_STATE, {
        InProgress = "in_progress",
        Satisfied = "satisfied",
        Failed = "failed",
        Corrective = "corrective",
    }
);

fn ser_bytes<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

fn ser_opt_bytes<S: Serializer>(b: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => ser_bytes(b, s),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Issue {
    pub intent_id: String,
    pub actor: String,
    pub target_scope: String,
    pub objective: String,
    pub timestamp_ms: Option<u64>,
    #[serde(skip)]
    pub extra: Vec<Field>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Command {
    pub command_id: String,
    pub intent_id: String,
    pub ghost_id: String,
    pub seed_selector: String,
    pub operation: String,
    pub args: Args,
    pub lock_token: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub attempt: Option<u32>,
    pub timestamp_ms: Option<u64>,
    #[serde(skip)]
    pub extra: Vec<Field>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SeedExecute {
    pub execution_id: String,
    pub command_id: String,
    pub seed_id: String,
    pub operation: String,
    pub args: Args,
    #[serde(skip)]
    pub extra: Vec<Field>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SeedResult {
    pub execution_id: String,
    pub seed_id: String,
    pub status: String,
    #[serde(serialize_with = "ser_bytes")]
    pub stdout: Bytes,
    #[serde(serialize_with = "ser_bytes")]
    pub stderr: Bytes,
    pub exit_code: u32,
    #[serde(skip)]
    pub extra: Vec<Field>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub event_id: String,
    pub command_id: String,
    pub intent_id: String,
    pub ghost_id: String,
    pub seed_id: String,
    pub outcome: Outcome,
    pub timestamp_ms: Option<u64>,
    /// ext: the seed's result travels with the event (ids 3, 400–403).
    pub execution_id: Option<String>,
    pub status: Option<String>,
    #[serde(serialize_with = "ser_opt_bytes")]
    pub stdout: Option<Bytes>,
    #[serde(serialize_with = "ser_opt_bytes")]
    pub stderr: Option<Bytes>,
    pub exit_code: Option<u32>,
    /// ext: why a command was refused or failed (codes as PROTOCOL.md §6).
    pub error_code: Option<u32>,
    pub error_reason: Option<String>,
    #[serde(skip)]
    pub extra: Vec<Field>,
}

impl Command {
    /// The relative budget (ext 207) if the sender attached one: ms left before the deadline
    /// when the frame was written. A malformed one counts as absent.
    pub fn budget_ms(&self) -> Option<u64> {
        self.extra
            .iter()
            .find(|f| f.id == crate::wire::tlv::id::BUDGET_MS)
            .and_then(|f| f.as_u64().ok())
    }

    /// Attaches (or replaces) the relative budget, from `deadline_ms` and the sender's clock
    /// at the moment the frame is written. Without a deadline nothing is attached.
    pub fn attach_budget(&mut self, now_ms: u64) {
        let id = crate::wire::tlv::id::BUDGET_MS;
        self.extra.retain(|f| f.id != id);
        if let Some(d) = self.deadline_ms {
            self.extra.push(Field::u64(id, d.saturating_sub(now_ms)));
        }
    }
}

impl Event {
    /// A minimal event; optional parts are filled in by the caller.
    pub fn new(
        event_id: impl Into<String>,
        command_id: impl Into<String>,
        intent_id: impl Into<String>,
        ghost_id: impl Into<String>,
        seed_id: impl Into<String>,
        outcome: Outcome,
    ) -> Event {
        Event {
            event_id: event_id.into(),
            command_id: command_id.into(),
            intent_id: intent_id.into(),
            ghost_id: ghost_id.into(),
            seed_id: seed_id.into(),
            outcome,
            timestamp_ms: None,
            execution_id: None,
            status: None,
            stdout: None,
            stderr: None,
            exit_code: None,
            error_code: None,
            error_reason: None,
            extra: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub intent_id: String,
    pub phase: Phase,
    pub summary: String,
    pub completion_state: CompletionState,
    pub command_id: Option<String>,
    pub execution_id: Option<String>,
    pub event_id: Option<String>,
    pub outcome: Option<Outcome>,
    pub timestamp_ms: Option<u64>,
    /// ext: the Ghost a step report concerns.
    pub ghost_id: Option<String>,
    #[serde(skip)]
    pub extra: Vec<Field>,
}

/// ext: edgectl defines no field set for type 7; ours requires 800 and 801.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ErrorEnvelope {
    pub error_code: u32,
    pub error_reason: String,
    pub ref_message_id: Option<u64>,
    pub command_id: Option<String>,
    pub event_id: Option<String>,
    pub timestamp_ms: Option<u64>,
    #[serde(skip)]
    pub extra: Vec<Field>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventAck {
    pub event_id: String,
    pub command_id: String,
    pub ghost_id: String,
    pub ack_status: AckStatus,
    /// Always written (edgectl does); absent on decode means 0.
    pub ack_code: u32,
    pub timestamp_ms: u64,
    #[serde(skip)]
    pub extra: Vec<Field>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Envelope {
    Issue(Issue),
    Command(Command),
    #[serde(rename = "seed.execute")]
    SeedExecute(SeedExecute),
    #[serde(rename = "seed.result")]
    SeedResult(SeedResult),
    Event(Event),
    Report(Report),
    Error(ErrorEnvelope),
    #[serde(rename = "event.ack")]
    EventAck(EventAck),
}

/// Typed reads over validated fields (first occurrence wins).
struct Rd<'a> {
    f: &'a Fields,
    mt: u32,
    name: &'static str,
}

impl Rd<'_> {
    fn field(&self, fid: u16) -> Result<&Field, WireError> {
        self.f.get(fid).ok_or(WireError::MissingField {
            message_type: self.mt,
            name: self.name,
            field_id: fid,
        })
    }

    /// Required strings must also be non-blank: an empty id is never meaningful.
    fn s(&self, fid: u16) -> Result<String, WireError> {
        let v = self.field(fid)?.as_str()?;
        if v.trim().is_empty() {
            return Err(WireError::BadValue {
                field_id: fid,
                reason: format!("{} must not be blank", self.name),
            });
        }
        Ok(v.to_owned())
    }

    fn os(&self, fid: u16) -> Result<Option<String>, WireError> {
        self.f
            .get(fid)
            .map(|f| f.as_str().map(str::to_owned))
            .transpose()
    }

    fn u32(&self, fid: u16) -> Result<u32, WireError> {
        self.field(fid)?.as_u32()
    }

    fn ou32(&self, fid: u16) -> Result<Option<u32>, WireError> {
        self.f.get(fid).map(Field::as_u32).transpose()
    }

    fn u64(&self, fid: u16) -> Result<u64, WireError> {
        self.field(fid)?.as_u64()
    }

    fn ou64(&self, fid: u16) -> Result<Option<u64>, WireError> {
        self.f.get(fid).map(Field::as_u64).transpose()
    }

    fn b(&self, fid: u16) -> Result<Bytes, WireError> {
        Ok(self.field(fid)?.value.clone())
    }

    fn ob(&self, fid: u16) -> Option<Bytes> {
        self.f.get(fid).map(|f| f.value.clone())
    }

    fn args(&self, fid: u16) -> Result<Args, WireError> {
        match self.f.get(fid) {
            Some(f) => decode_args(fid, &f.value),
            None => Ok(Args::new()),
        }
    }

    /// Everything this message type does not consume, in wire order.
    fn extra(&self, s: &schema::Schema) -> Vec<Field> {
        let mut seen: Vec<u16> = Vec::new();
        let mut out = Vec::new();
        for f in self.f.iter() {
            if s.knows(f.id) && !seen.contains(&f.id) {
                seen.push(f.id);
            } else {
                out.push(f.clone());
            }
        }
        out
    }
}

/// Builds fields in order; `opt_*` skip absent values.
#[derive(Default)]
struct Wr(Vec<Field>);

impl Wr {
    fn s(mut self, fid: u16, v: &str) -> Self {
        self.0.push(Field::string(fid, v));
        self
    }
    fn os(self, fid: u16, v: &Option<String>) -> Self {
        match v {
            Some(v) => self.s(fid, v),
            None => self,
        }
    }
    fn b(mut self, fid: u16, v: &Bytes) -> Self {
        self.0.push(Field::bytes(fid, v.clone()));
        self
    }
    fn ob(self, fid: u16, v: &Option<Bytes>) -> Self {
        match v {
            Some(v) => self.b(fid, v),
            None => self,
        }
    }
    fn u32(mut self, fid: u16, v: u32) -> Self {
        self.0.push(Field::u32(fid, v));
        self
    }
    fn ou32(self, fid: u16, v: Option<u32>) -> Self {
        match v {
            Some(v) => self.u32(fid, v),
            None => self,
        }
    }
    fn u64(mut self, fid: u16, v: u64) -> Self {
        self.0.push(Field::u64(fid, v));
        self
    }
    fn ou64(self, fid: u16, v: Option<u64>) -> Self {
        match v {
            Some(v) => self.u64(fid, v),
            None => self,
        }
    }
    fn extra(mut self, extra: &[Field]) -> Fields {
        self.0.extend_from_slice(extra);
        Fields(self.0)
    }
}

impl Envelope {
    /// Schema check then typed decode of already TLV-decoded fields.
    pub fn decode(message_type: u32, fields: &Fields) -> Result<Envelope, WireError> {
        let s = schema::validate(message_type, fields)?;
        let r = Rd {
            f: fields,
            mt: message_type,
            name: s.name,
        };
        use id::*;
        Ok(match message_type {
            mt::ISSUE => Envelope::Issue(Issue {
                intent_id: r.s(INTENT_ID)?,
                actor: r.s(ACTOR)?,
                target_scope: r.s(TARGET_SCOPE)?,
                objective: r.s(OBJECTIVE)?,
                timestamp_ms: r.ou64(TIMESTAMP_MS)?,
                extra: r.extra(s),
            }),
            mt::COMMAND => Envelope::Command(Command {
                command_id: r.s(COMMAND_ID)?,
                intent_id: r.s(INTENT_ID)?,
                ghost_id: r.s(GHOST_ID)?,
                seed_selector: r.s(SEED_SELECTOR)?,
                operation: r.s(OPERATION)?,
                args: r.args(ARGS)?,
                lock_token: r.ou64(LOCK_TOKEN)?,
                deadline_ms: r.ou64(DEADLINE_MS)?,
                attempt: r.ou32(ATTEMPT)?,
                timestamp_ms: r.ou64(TIMESTAMP_MS)?,
                extra: r.extra(s),
            }),
            mt::SEED_EXECUTE => Envelope::SeedExecute(SeedExecute {
                execution_id: r.s(EXECUTION_ID)?,
                command_id: r.s(COMMAND_ID)?,
                seed_id: r.s(SEED_ID)?,
                operation: r.s(EXEC_OPERATION)?,
                args: r.args(EXEC_ARGS)?,
                extra: r.extra(s),
            }),
            mt::SEED_RESULT => Envelope::SeedResult(SeedResult {
                execution_id: r.s(EXECUTION_ID)?,
                seed_id: r.s(SEED_ID)?,
                status: r.s(STATUS)?,
                stdout: r.b(STDOUT)?,
                stderr: r.b(STDERR)?,
                exit_code: r.u32(EXIT_CODE)?,
                extra: r.extra(s),
            }),
            mt::EVENT => Envelope::Event(Event {
                event_id: r.s(EVENT_ID)?,
                command_id: r.s(COMMAND_ID)?,
                intent_id: r.s(INTENT_ID)?,
                ghost_id: r.s(GHOST_ID)?,
                seed_id: r.s(SEED_ID)?,
                outcome: Outcome::parse(&r.s(OUTCOME)?)?,
                timestamp_ms: r.ou64(TIMESTAMP_MS)?,
                execution_id: r.os(EXECUTION_ID)?,
                status: r.os(STATUS)?,
                stdout: r.ob(STDOUT),
                stderr: r.ob(STDERR),
                exit_code: r.ou32(EXIT_CODE)?,
                error_code: r.ou32(ERROR_CODE)?,
                error_reason: r.os(ERROR_REASON)?,
                extra: r.extra(s),
            }),
            mt::REPORT => Envelope::Report(Report {
                intent_id: r.s(INTENT_ID)?,
                phase: Phase::parse(&r.s(PHASE)?)?,
                summary: r.s(SUMMARY)?,
                completion_state: CompletionState::parse(&r.s(COMPLETION_STATE)?)?,
                command_id: r.os(COMMAND_ID)?,
                execution_id: r.os(EXECUTION_ID)?,
                event_id: r.os(EVENT_ID)?,
                outcome: r.os(OUTCOME)?.map(|o| Outcome::parse(&o)).transpose()?,
                timestamp_ms: r.ou64(TIMESTAMP_MS)?,
                ghost_id: r.os(GHOST_ID)?,
                extra: r.extra(s),
            }),
            mt::ERROR => Envelope::Error(ErrorEnvelope {
                error_code: r.u32(ERROR_CODE)?,
                error_reason: r.os(ERROR_REASON)?.unwrap_or_default(),
                ref_message_id: r.ou64(REF_MESSAGE_ID)?,
                command_id: r.os(COMMAND_ID)?,
                event_id: r.os(EVENT_ID)?,
                timestamp_ms: r.ou64(TIMESTAMP_MS)?,
                extra: r.extra(s),
            }),
            mt::EVENT_ACK => Envelope::EventAck(EventAck {
                event_id: r.s(EVENT_ID)?,
                command_id: r.s(COMMAND_ID)?,
                ghost_id: r.s(GHOST_ID)?,
                ack_status: AckStatus::parse(&r.s(ACK_STATUS)?)?,
                ack_code: r.ou32(ACK_CODE)?.unwrap_or(0),
                timestamp_ms: r.u64(TIMESTAMP_MS)?,
                extra: r.extra(s),
            }),
            other => return Err(WireError::UnknownMessageType(other)),
        })
    }

    /// The full receive pipeline for one frame: TLV, schema, typed.
    pub fn from_frame(frame: &Frame) -> Result<Envelope, WireError> {
        let fields = frame.fields()?;
        Envelope::decode(frame.message_type, &fields)
    }

    pub fn message_type(&self) -> u32 {
        match self {
            Envelope::Issue(_) => mt::ISSUE,
            Envelope::Command(_) => mt::COMMAND,
            Envelope::SeedExecute(_) => mt::SEED_EXECUTE,
            Envelope::SeedResult(_) => mt::SEED_RESULT,
            Envelope::Event(_) => mt::EVENT,
            Envelope::Report(_) => mt::REPORT,
            Envelope::Error(_) => mt::ERROR,
            Envelope::EventAck(_) => mt::EVENT_ACK,
        }
    }

    /// Fields in edgectl's order, then ext fields, then carried-through extras.
    pub fn to_fields(&self) -> Fields {
        use id::*;
        match self {
            Envelope::Issue(m) => Wr::default()
                .s(INTENT_ID, &m.intent_id)
                .s(ACTOR, &m.actor)
                .s(TARGET_SCOPE, &m.target_scope)
                .s(OBJECTIVE, &m.objective)
                .ou64(TIMESTAMP_MS, m.timestamp_ms)
                .extra(&m.extra),
            Envelope::Command(m) => {
                let w = Wr::default()
                    .s(COMMAND_ID, &m.command_id)
                    .s(INTENT_ID, &m.intent_id)
                    .s(GHOST_ID, &m.ghost_id)
                    .s(SEED_SELECTOR, &m.seed_selector)
                    .s(OPERATION, &m.operation);
                // edgectl omits 203 when there are no args. Not when a carried-through
                // duplicate 203 follows: it would become the first occurrence and win on
                // re-decode, changing the args a relayed command carries.
                let w = if m.args.is_empty() && !m.extra.iter().any(|f| f.id == ARGS) {
                    w
                } else {
                    w.b(ARGS, &encode_args(&m.args))
                };
                w.ou64(LOCK_TOKEN, m.lock_token)
                    .ou64(DEADLINE_MS, m.deadline_ms)
                    .ou32(ATTEMPT, m.attempt)
                    .ou64(TIMESTAMP_MS, m.timestamp_ms)
                    .extra(&m.extra)
            }
            Envelope::SeedExecute(m) => Wr::default()
                .s(EXECUTION_ID, &m.execution_id)
                .s(COMMAND_ID, &m.command_id)
                .s(SEED_ID, &m.seed_id)
                .s(EXEC_OPERATION, &m.operation)
                .b(EXEC_ARGS, &encode_args(&m.args))
                .extra(&m.extra),
            Envelope::SeedResult(m) => Wr::default()
                .s(EXECUTION_ID, &m.execution_id)
                .s(SEED_ID, &m.seed_id)
                .s(STATUS, &m.status)
                .b(STDOUT, &m.stdout)
                .b(STDERR, &m.stderr)
                .u32(EXIT_CODE, m.exit_code)
                .extra(&m.extra),
            Envelope::Event(m) => Wr::default()
                .s(EVENT_ID, &m.event_id)
                .s(COMMAND_ID, &m.command_id)
                .s(INTENT_ID, &m.intent_id)
                .s(GHOST_ID, &m.ghost_id)
                .s(SEED_ID, &m.seed_id)
                .s(OUTCOME, m.outcome.as_str())
                .ou64(TIMESTAMP_MS, m.timestamp_ms)
                .os(EXECUTION_ID, &m.execution_id)
                .os(STATUS, &m.status)
                .ob(STDOUT, &m.stdout)
                .ob(STDERR, &m.stderr)
                .ou32(EXIT_CODE, m.exit_code)
                .ou32(ERROR_CODE, m.error_code)
                .os(ERROR_REASON, &m.error_reason)
                .extra(&m.extra),
            Envelope::Report(m) => Wr::default()
                .s(INTENT_ID, &m.intent_id)
                .s(PHASE, m.phase.as_str())
                .s(SUMMARY, &m.summary)
                .s(COMPLETION_STATE, m.completion_state.as_str())
                .os(COMMAND_ID, &m.command_id)
                .os(EXECUTION_ID, &m.execution_id)
                .os(EVENT_ID, &m.event_id)
                .os(OUTCOME, &m.outcome.map(|o| o.as_str().to_owned()))
                .ou64(TIMESTAMP_MS, m.timestamp_ms)
                .os(GHOST_ID, &m.ghost_id)
                .extra(&m.extra),
            Envelope::Error(m) => Wr::default()
                .u32(ERROR_CODE, m.error_code)
                .s(ERROR_REASON, &m.error_reason)
                .ou64(REF_MESSAGE_ID, m.ref_message_id)
                .os(COMMAND_ID, &m.command_id)
                .os(EVENT_ID, &m.event_id)
                .ou64(TIMESTAMP_MS, m.timestamp_ms)
                .extra(&m.extra),
            Envelope::EventAck(m) => Wr::default()
                .s(EVENT_ID, &m.event_id)
                .s(COMMAND_ID, &m.command_id)
                .s(GHOST_ID, &m.ghost_id)
                .s(ACK_STATUS, m.ack_status.as_str())
                .u32(ACK_CODE, m.ack_code)
                .u64(TIMESTAMP_MS, m.timestamp_ms)
                .extra(&m.extra),
        }
    }

    /// Frames the envelope. Flags follow the contract: `event.ack` is a response, `error`
    /// is an error (and a response when it names the frame it answers).
    pub fn to_frame(&self, message_id: u64) -> Result<Frame, WireError> {
        let flags = match self {
            Envelope::EventAck(_) => crate::wire::flags::IS_RESPONSE,
            Envelope::Error(e) if e.ref_message_id.is_some() => {
                crate::wire::flags::IS_ERROR | crate::wire::flags::IS_RESPONSE
            }
            Envelope::Error(_) => crate::wire::flags::IS_ERROR,
            _ => 0,
        };
        Ok(Frame::new(
            message_id,
            self.message_type(),
            flags,
            self.to_fields().to_bytes()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tlv::ty;

    #[test]
    fn missing_and_mismatched_fields_name_type_and_id() {
        let ev = Envelope::Event(Event::new(
            "e",
            "c",
            "i",
            "g",
            "seed.flow",
            Outcome::Success,
        ));
        let mut fields = ev.to_fields();
        fields.0.retain(|f| f.id != id::OUTCOME);
        let err = Envelope::decode(mt::EVENT, &fields).unwrap_err();
        assert_eq!(
            err.to_string(),
            "schema: message_type=5 (event) field=500: missing required field"
        );
        let mut fields = ev.to_fields();
        fields.0[0].ty = ty::BYTES;
        let err = Envelope::decode(mt::EVENT, &fields).unwrap_err();
        assert!(err.to_string().contains("field=4: type mismatch"), "{err}");
    }

    #[test]
    fn vocabulary_and_blank_ids_are_typed_errors() {
        let mut fields =
            Envelope::Event(Event::new("e", "c", "i", "g", "s", Outcome::Error)).to_fields();
        fields.0[5] = Field::string(id::OUTCOME, "maybe");
        let err = Envelope::decode(mt::EVENT, &fields).unwrap_err();
        assert_eq!(err.stage(), crate::error::Stage::Typed);
        fields.0[5] = Field::string(id::OUTCOME, "success");
        fields.0[0] = Field::string(id::EVENT_ID, "  ");
        assert!(Envelope::decode(mt::EVENT, &fields).is_err());
    }

    #[test]
    fn args_accept_go_escapes_and_null() {
        let a = decode_args(203, br#"{"k":"\u003cx\u003e"}"#).unwrap();
        assert_eq!(a["k"], "<x>");
        assert!(decode_args(203, b"null").unwrap().is_empty());
        assert!(decode_args(203, br#"{"k":1}"#).is_err());
        assert!(decode_args(203, b"[]").is_err());
        let mut a = Args::new();
        a.insert("z".into(), "1".into());
        a.insert("a".into(), "2".into());
        assert_eq!(&encode_args(&a)[..], br#"{"a":"2","z":"1"}"#);
    }

    #[test]
    fn error_frames_set_flags() {
        let e = Envelope::Error(ErrorEnvelope {
            error_code: 1300,
            error_reason: "bad".into(),
            ref_message_id: Some(9),
            ..Default::default()
        });
        let f = e.to_frame(3).unwrap();
        assert!(f.is_error() && f.is_response());
        assert_eq!(Envelope::from_frame(&f).unwrap(), e);
    }
}
