//! Which fields each message type carries, in check order (PROTOCOL.md §5). Pure data.

use crate::error::WireError;
use crate::wire::tlv::{id, ty, Fields};

/// Message type ids.
pub mod mt {
    pub const ISSUE: u32 = 1;
    pub const COMMAND: u32 = 2;
    pub const SEED_EXECUTE: u32 = 3;
    pub const SEED_RESULT: u32 = 4;
    pub const EVENT: u32 = 5;
    pub const REPORT: u32 = 6;
    pub const ERROR: u32 = 7;
    pub const EVENT_ACK: u32 = 8;
}

pub fn type_name(message_type: u32) -> Option<&'static str> {
    Some(match message_type {
        mt::ISSUE => "issue",
        mt::COMMAND => "command",
        mt::SEED_EXECUTE => "seed.execute",
        mt::SEED_RESULT => "seed.result",
        mt::EVENT => "event",
        mt::REPORT => "report",
        mt::ERROR => "error",
        mt::EVENT_ACK => "event.ack",
        _ => return None,
    })
}

/// (field id, type byte). Required ones are checked in this order; optional ones only for
/// their type byte.
pub struct Schema {
    pub name: &'static str,
    pub required: &'static [(u16, u8)],
    pub optional: &'static [(u16, u8)],
}

const S: u8 = ty::STRING;
const B: u8 = ty::BYTES;
const U32: u8 = ty::U32;
const U64: u8 = ty::U64;

static ISSUE: Schema = Schema {
    name: "issue",
    required: &[
        (id::INTENT_ID, S),
        (id::ACTOR, S),
        (id::TARGET_SCOPE, S),
        (id::OBJECTIVE, S),
    ],
    optional: &[(id::TIMESTAMP_MS, U64)],
};

static COMMAND: Schema = Schema {
    name: "command",
    required: &[
        (id::COMMAND_ID, S),
        (id::INTENT_ID, S),
        (id::GHOST_ID, S),
        (id::SEED_SELECTOR, S),
        (id::OPERATION, S),
    ],
    optional: &[
        (id::ARGS, B),
        (id::LOCK_TOKEN, U64),
        (id::DEADLINE_MS, U64),
        (id::ATTEMPT, U32),
        (id::TIMESTAMP_MS, U64),
    ],
};

static SEED_EXECUTE: Schema = Schema {
    name: "seed.execute",
    required: &[
        (id::EXECUTION_ID, S),
        (id::COMMAND_ID, S),
        (id::SEED_ID, S),
        (id::EXEC_OPERATION, S),
        (id::EXEC_ARGS, B),
    ],
    optional: &[],
};

static SEED_RESULT: Schema = Schema {
    name: "seed.result",
    required: &[
        (id::EXECUTION_ID, S),
        (id::SEED_ID, S),
        (id::STATUS, S),
        (id::STDOUT, B),
        (id::STDERR, B),
        (id::EXIT_CODE, U32),
    ],
    optional: &[],
};

static EVENT: Schema = Schema {
    name: "event",
    required: &[
        (id::EVENT_ID, S),
        (id::COMMAND_ID, S),
        (id::INTENT_ID, S),
        (id::GHOST_ID, S),
        (id::SEED_ID, S),
        (id::OUTCOME, S),
    ],
    optional: &[
        (id::TIMESTAMP_MS, U64),
        (id::EXECUTION_ID, S),
        (id::STATUS, S),
        (id::STDOUT, B),
        (id::STDERR, B),
        (id::EXIT_CODE, U32),
        (id::ERROR_CODE, U32),
        (id::ERROR_REASON, S),
    ],
};

static REPORT: Schema = Schema {
    name: "report",
    required: &[
        (id::INTENT_ID, S),
        (id::PHASE, S),
        (id::SUMMARY, S),
        (id::COMPLETION_STATE, S),
    ],
    optional: &[
        (id::COMMAND_ID, S),
        (id::EXECUTION_ID, S),
        (id::EVENT_ID, S),
        (id::OUTCOME, S),
        (id::TIMESTAMP_MS, U64),
        (id::GHOST_ID, S),
    ],
};

static ERROR: Schema = Schema {
    name: "error",
    required: &[(id::ERROR_CODE, U32), (id::ERROR_REASON, S)],
    optional: &[
        (id::REF_MESSAGE_ID, U64),
        (id::COMMAND_ID, S),
        (id::EVENT_ID, S),
        (id::TIMESTAMP_MS, U64),
    ],
};

static EVENT_ACK: Schema = Schema {
    name: "event.ack",
    required: &[
        (id::EVENT_ID, S),
        (id::COMMAND_ID, S),
        (id::GHOST_ID, S),
        (id::ACK_STATUS, S),
        (id::TIMESTAMP_MS, U64),
    ],
    optional: &[(id::ACK_CODE, U32)],
};

pub fn schema(message_type: u32) -> Option<&'static Schema> {
    Some(match message_type {
        mt::ISSUE => &ISSUE,
        mt::COMMAND => &COMMAND,
        mt::SEED_EXECUTE => &SEED_EXECUTE,
        mt::SEED_RESULT => &SEED_RESULT,
        mt::EVENT => &EVENT,
        mt::REPORT => &REPORT,
        mt::ERROR => &ERROR,
        mt::EVENT_ACK => &EVENT_ACK,
        _ => return None,
    })
}

impl Schema {
    pub fn knows(&self, field_id: u16) -> bool {
        self.required
            .iter()
            .chain(self.optional)
            .any(|(i, _)| *i == field_id)
    }
}

/// Presence and type-byte check (first occurrence of each id), required fields first in the
/// documented order. Unknown ids are ignored.
pub fn validate(message_type: u32, fields: &Fields) -> Result<&'static Schema, WireError> {
    let s = schema(message_type).ok_or(WireError::UnknownMessageType(message_type))?;
    for &(fid, want) in s.required {
        match fields.get(fid) {
            None => {
                return Err(WireError::MissingField {
                    message_type,
                    name: s.name,
                    field_id: fid,
                })
            }
            Some(f) if f.ty != want => {
                return Err(WireError::TypeMismatch {
                    message_type,
                    name: s.name,
                    field_id: fid,
                    expected: want,
                    got: f.ty,
                })
            }
            Some(_) => {}
        }
    }
    for &(fid, want) in s.optional {
        if let Some(f) = fields.get(fid) {
            if f.ty != want {
                return Err(WireError::TypeMismatch {
                    message_type,
                    name: s.name,
                    field_id: fid,
                    expected: want,
                    got: f.ty,
                });
            }
        }
    }
    Ok(s)
}
