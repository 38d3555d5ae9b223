//! Confluent's wire format for schema-registry records: magic byte `0`, the schema id as a
//! 4-byte big-endian integer, then the payload (Avro binary, JSON text; Protobuf adds
//! message indexes, not handled here).

/// The magic byte.
pub const MAGIC: u8 = 0;

/// Appends the 5-byte header for schema `id`.
pub fn write_header(id: u32, out: &mut Vec<u8>) {
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Splits a framed message into (schema id, payload), or says why it is not one.
pub fn split(message: &[u8]) -> Result<(u32, &[u8]), String> {
    match message {
        [] => Err("empty message: no schema-registry header".into()),
        [m, ..] if *m != MAGIC => Err(format!(
            "bad magic byte {m} (expected 0: not written with a schema registry serializer)"
        )),
        [_, rest @ ..] if rest.len() < 4 => Err(format!(
            "truncated header: {} byte(s), 5 needed (magic byte and schema id)",
            message.len()
        )),
        [_, a, b, c, d, payload @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), payload)),
        _ => unreachable!("covered above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_say_why() {
        let mut m = Vec::new();
        write_header(258, &mut m);
        m.extend_from_slice(b"xy");
        assert_eq!(m[..5], [0, 0, 0, 1, 2]);
        assert_eq!(split(&m).unwrap(), (258, &b"xy"[..]));
        assert!(split(b"{\"a\":1}")
            .unwrap_err()
            .contains("bad magic byte 123"));
        assert!(split(&[0, 0, 1]).unwrap_err().contains("truncated header"));
        assert!(split(&[]).unwrap_err().contains("empty"));
    }
}
