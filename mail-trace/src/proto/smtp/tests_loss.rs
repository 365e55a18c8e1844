//! Losses around BDAT chunks and pickups (issue 16, tests/loss_smtp.rs): exact events.

use super::tests::{assert_chunk_invariant, cmd, feed, Step, C, MS, S};
use super::*;

fn rep(code: &str, enhanced: Option<&str>, text: &str, ts: Ts, lat: Option<Ts>) -> Event {
    Event::Reply {
        ts,
        code: code.into(),
        enhanced: enhanced.map(Into::into),
        text: text.into(),
        latency_ns: lat,
    }
}

fn said(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::Command { .. } | Event::Reply { .. }))
        .collect()
}

/// A pickup lands on a BDAT line: held until the reply shows it was a command, and its chunk
/// (a line shaped like a command in it, no CRLF at its end) with it, so that the QUIT after
/// the reply is read as QUIT (not as chunk bytes, nor glued to the chunk's last line).
#[test]
fn pickup_holds_a_bdat_chunk_with_its_line() {
    let start = SessionStart {
        partial: true,
        ..SessionStart::default()
    };
    let steps: &[Step<'_>] = &[
        (C, b"BDAT 21 LAST\r\nMAIL FROM:<x@y>\r\nab--", 2 * MS),
        (S, b"250 2.0.0 Ok: queued as Q1\r\n", 3 * MS),
        (C, b"QUIT\r\n", 4 * MS),
        (S, b"221 bye\r\n", 5 * MS),
    ];
    let mut smtp = Smtp::new(Privacy::default(), start);
    let events = feed(&mut smtp, steps, usize::MAX);
    assert_eq!(
        said(&events),
        [
            &cmd("BDAT", "21 LAST", 2 * MS),
            &rep("250", Some("2.0.0"), "Ok: queued as Q1", 3 * MS, None),
            &cmd("QUIT", "", 4 * MS),
            // Realigned by the queue id: the QUIT is sure.
            &rep("221", None, "bye", 5 * MS, Some(MS)),
        ]
    );
    let tx = &smtp.transactions()[0];
    assert_eq!((tx.size, tx.bdat_chunks), (Some(21), 1));
    assert_eq!(tx.queue_id.as_deref(), Some("Q1"));
    assert_chunk_invariant(Privacy::default(), start, steps);
}

/// The BDAT line is lost and its chunk does not end with CRLF: the reply shows the chunk was
/// whole, so its partial last line is dropped and the QUIT after the reply is a command.
#[test]
fn reply_ends_a_partial_line_after_a_client_loss() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(&mut smtp, &[(S, b"220 mx\r\n", MS)], usize::MAX);
    smtp.gap(C, 14, 2 * MS);
    let events = feed(
        &mut smtp,
        &[
            (C, b"text\r\nab--", 2 * MS),
            (S, b"250 2.0.0 Ok: queued as Q2\r\n", 3 * MS),
            (C, b"QUIT\r\n", 4 * MS),
            (S, b"221 bye\r\n", 5 * MS),
        ],
        usize::MAX,
    );
    assert_eq!(
        said(&events),
        [
            &rep("250", Some("2.0.0"), "Ok: queued as Q2", 3 * MS, None),
            &cmd("QUIT", "", 4 * MS),
            &rep("221", None, "bye", 5 * MS, None),
        ]
    );
}

/// A BDAT answered before its chunk was whole: the rest of the chunk was lost (the gap is seen
/// only with the client's next bytes). The reply is the chunk's, untimed; the message is
/// incomplete with the chunk's size; the QUIT after the gap is read as QUIT.
#[test]
fn bdat_answered_before_its_chunk_was_whole() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    let mut events = feed(
        &mut smtp,
        &[
            (S, b"220 mx\r\n", MS),
            (C, b"MAIL FROM:<a@x>\r\nBDAT 100 LAST\r\n", 2 * MS),
            (C, &[b'x'; 40], 3 * MS),
            (S, b"250 ok\r\n250 2.0.0 Ok: queued as Q3\r\n", 4 * MS),
        ],
        usize::MAX,
    );
    smtp.gap(C, 60, 5 * MS);
    events.extend(feed(
        &mut smtp,
        &[(C, b"QUIT\r\n", 5 * MS), (S, b"221 bye\r\n", 6 * MS)],
        usize::MAX,
    ));
    assert_eq!(
        said(&events),
        [
            &rep("220", None, "mx", MS, None),
            &cmd("MAIL", "FROM:<a@x>", 2 * MS),
            &cmd("BDAT", "100 LAST", 2 * MS),
            &rep("250", None, "ok", 4 * MS, Some(2 * MS)),
            &rep("250", Some("2.0.0"), "Ok: queued as Q3", 4 * MS, None),
            &cmd("QUIT", "", 5 * MS),
            &rep("221", None, "bye", 6 * MS, None),
        ]
    );
    let tx = &smtp.transactions()[0];
    assert_eq!((tx.size, tx.incomplete), (Some(100), true));
    assert_eq!(tx.queue_id.as_deref(), Some("Q3"));
}

/// The end of a chunk is in a gap: when the server had the whole chunk is unknown, so its
/// reply is not timed (it would be measured from the gap's report).
#[test]
fn chunk_end_lost_leaves_its_reply_untimed() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(
        &mut smtp,
        &[(S, b"220 mx\r\n", MS), (C, b"BDAT 10 LAST\r\nabcd", 2 * MS)],
        usize::MAX,
    );
    smtp.gap(C, 6, 3 * MS);
    let events = feed(
        &mut smtp,
        &[
            (S, b"250 2.0.0 Ok: queued as Q4\r\n", 4 * MS),
            (C, b"QUIT\r\n", 5 * MS),
            (S, b"221 bye\r\n", 6 * MS),
        ],
        usize::MAX,
    );
    assert_eq!(
        said(&events),
        [
            &rep("250", Some("2.0.0"), "Ok: queued as Q4", 4 * MS, None),
            &cmd("QUIT", "", 5 * MS),
            &rep("221", None, "bye", 6 * MS, Some(MS)),
        ]
    );
    let tx = &smtp.transactions()[0];
    assert_eq!((tx.size, tx.incomplete), (Some(10), true));
}

/// After a lost EHLO reply a queue id answers the last BDAT, not a chunk before it
/// (suricata-verify smtp-bdat-multichunk-next-mail): the next MAIL's reply is its own.
#[test]
fn queue_id_answers_the_last_bdat_not_a_chunk() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(
        &mut smtp,
        &[(S, b"220 mx\r\n", MS), (C, b"EHLO c\r\n", 2 * MS)],
        usize::MAX,
    );
    smtp.gap(S, 30, 3 * MS);
    let events = feed(
        &mut smtp,
        &[
            (
                C,
                b"MAIL FROM:<a@x>\r\nBDAT 2\r\nabBDAT 1 LAST\r\nc",
                4 * MS,
            ),
            (
                S,
                b"250 mail\r\n250 chunk\r\n250 Ok: queued as Q5\r\n",
                5 * MS,
            ),
            (C, b"MAIL FROM:<b@x>\r\n", 6 * MS),
            (S, b"250 next\r\n", 7 * MS),
        ],
        usize::MAX,
    );
    assert!(said(&events).contains(&&rep("250", None, "Ok: queued as Q5", 5 * MS, None)));
    assert!(said(&events).contains(&&rep("250", None, "next", 7 * MS, Some(MS))));
    assert_eq!(smtp.transactions()[0].queue_id.as_deref(), Some("Q5"));
    assert_eq!(
        smtp.transactions()[1].mail_reply.as_ref().map(|r| r.text()),
        Some("next".into())
    );
}

/// A BDAT with a negative count after a client loss is still a command once a reply shows the
/// client is not in a message (zeek smtp-bdat-cmd-negative-chunk-size, RCPT lost).
#[test]
fn invalid_bdat_after_a_loss_is_a_command() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(&mut smtp, &[(S, b"220 mx\r\n", MS)], usize::MAX);
    smtp.gap(C, 20, 2 * MS);
    let events = feed(
        &mut smtp,
        &[
            (C, b"BDAT -1 LAST\r\n", 3 * MS),
            (S, b"521 5.5.4 Syntax: BDAT count [LAST]\r\n", 4 * MS),
            (C, b"QUIT\r\n", 5 * MS),
        ],
        usize::MAX,
    );
    assert_eq!(
        said(&events),
        [
            &cmd("BDAT", "-1 LAST", 3 * MS),
            &rep(
                "521",
                Some("5.5.4"),
                "Syntax: BDAT count [LAST]",
                4 * MS,
                None
            ),
            &cmd("QUIT", "", 5 * MS),
        ]
    );
}

/// The refusal of a BDAT without a valid size is lost: the server spoke (a server gap), which
/// no message would have let it do, so the QUIT after it is a command although no reply is
/// seen (zeek smtp-bdat-cmd-chunk-size-overflow2, the 521 dropped).
#[test]
fn lost_refusal_of_an_invalid_bdat_leaves_commands_commands() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(
        &mut smtp,
        &[
            (S, b"220 mx\r\n", MS),
            (C, b"BDAT 99999999999999999999999 LAST\r\n", 2 * MS),
        ],
        usize::MAX,
    );
    smtp.gap(S, 37, 3 * MS);
    let events = feed(&mut smtp, &[(C, b"QUIT\r\n", 4 * MS)], usize::MAX);
    assert_eq!(said(&events), [&cmd("QUIT", "", 4 * MS)]);
}

/// AUTH LOGIN is lost; the server's 334 shows an AUTH step was asked for, so the client's next
/// line is a SASL response even when it reads "QUIT" (suricata-verify smtp-long-command).
#[test]
fn unpaired_334_makes_the_next_line_a_response() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(&mut smtp, &[(S, b"220 mx\r\n", MS)], usize::MAX);
    smtp.gap(C, 12, 2 * MS);
    let events = feed(
        &mut smtp,
        &[
            (S, b"334 VXNlcm5hbWU6\r\n", 3 * MS),
            (C, b"QUIT\r\n", 4 * MS),
            (S, b"334 UGFzc3dvcmQ6\r\n", 5 * MS),
        ],
        usize::MAX,
    );
    assert_eq!(
        said(&events),
        [
            &rep("334", None, "VXNlcm5hbWU6", 3 * MS, None),
            &cmd("AUTH-DATA", "<redacted>", 4 * MS),
            &rep("334", None, "UGFzc3dvcmQ6", 5 * MS, None),
        ]
    );
}

/// The 334 to AUTH LOGIN is lost: a line shaped like a command ("QUIT") is held until a reply
/// tells; the next 334 says it was a response.
#[test]
fn command_shaped_line_after_a_lost_334_waits_for_the_reply() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(
        &mut smtp,
        &[(S, b"220 mx\r\n", MS), (C, b"AUTH LOGIN\r\n", 2 * MS)],
        usize::MAX,
    );
    smtp.gap(S, 18, 3 * MS);
    let events = feed(
        &mut smtp,
        &[
            (C, b"QUIT\r\n", 4 * MS),
            (S, b"334 UGFzc3dvcmQ6\r\n", 5 * MS),
        ],
        usize::MAX,
    );
    assert_eq!(
        said(&events),
        [
            &cmd("AUTH-DATA", "<redacted>", 4 * MS),
            &rep("334", None, "UGFzc3dvcmQ6", 5 * MS, None),
        ]
    );
}

/// …and a reply other than 334 says it was a command.
#[test]
fn command_shaped_line_after_a_lost_334_is_a_command_on_a_final_reply() {
    let mut smtp = Smtp::new(Privacy::default(), SessionStart::default());
    feed(
        &mut smtp,
        &[(S, b"220 mx\r\n", MS), (C, b"AUTH LOGIN\r\n", 2 * MS)],
        usize::MAX,
    );
    smtp.gap(S, 18, 3 * MS);
    let events = feed(
        &mut smtp,
        &[(C, b"QUIT\r\n", 4 * MS), (S, b"221 bye\r\n", 5 * MS)],
        usize::MAX,
    );
    assert_eq!(
        said(&events),
        [
            &cmd("QUIT", "", 4 * MS),
            &rep("221", None, "bye", 5 * MS, None),
        ]
    );
}

/// A pickup on a pipelined DATA (arkime smtp-nospaces): the 501 of a lost HELO is not the
/// DATA's (commands were lost before it); the 354 is, and the message is read as one.
#[test]
fn refusal_after_lost_commands_is_not_the_datas() {
    let start = SessionStart {
        partial: true,
        ..SessionStart::default()
    };
    let steps: &[Step<'_>] = &[
        (C, b"DATA\r\n", 2 * MS),
        (S, b"501 HELO requires domain address\r\n354 go\r\n", 3 * MS),
        (C, b"Subject: s\r\n\r\nbody\r\n.\r\n", 4 * MS),
        (S, b"250 queued as QD\r\n", 5 * MS),
    ];
    let mut smtp = Smtp::new(Privacy::default(), start);
    let events = feed(&mut smtp, steps, usize::MAX);
    assert_eq!(
        said(&events),
        [
            &cmd("DATA", "", 2 * MS),
            &rep("501", None, "HELO requires domain address", 3 * MS, None),
            &rep("354", None, "go", 3 * MS, None),
            &rep("250", None, "queued as QD", 5 * MS, Some(MS)),
        ]
    );
    let tx = &smtp.transactions()[0];
    assert_eq!(
        (tx.data_code, tx.queue_id.as_deref()),
        (Some(354), Some("QD"))
    );
    assert_chunk_invariant(Privacy::default(), start, steps);
}

/// A pickup whose first bytes are ".\r\n" may be the tail of a body line ("…again.\r\n"):
/// a body line after it says it ended nothing (large_message cut #90) …
#[test]
fn first_dot_after_a_pickup_followed_by_body_ends_nothing() {
    let start = SessionStart {
        partial: true,
        ..SessionStart::default()
    };
    let steps: &[Step<'_>] = &[
        (C, b".\r\nline 2: the quick brown fox\r\n.\r\n", 2 * MS),
        (S, b"250 Ok: queued as QE\r\n", 3 * MS),
        (C, b"QUIT\r\n", 4 * MS),
        (S, b"221 bye\r\n", 5 * MS),
    ];
    let mut smtp = Smtp::new(Privacy::default(), start);
    let events = feed(&mut smtp, steps, usize::MAX);
    assert_eq!(
        said(&events),
        [
            // The end is the second "." (its reply paired by the queue id, untimed).
            &rep("250", None, "Ok: queued as QE", 3 * MS, None),
            &cmd("QUIT", "", 4 * MS),
            &rep("221", None, "bye", 5 * MS, Some(MS)),
        ]
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::Anomaly { id, .. } if *id == "unknown-command")));
    assert_chunk_invariant(Privacy::default(), start, steps);
}

/// … while a reply before any body line says it was the end (a pipelined QUIT after it held
/// and read as a command).
#[test]
fn first_dot_after_a_pickup_confirmed_by_the_reply() {
    let start = SessionStart {
        partial: true,
        ..SessionStart::default()
    };
    let steps: &[Step<'_>] = &[
        (C, b".\r\nQUIT\r\n", 2 * MS),
        (S, b"250 Ok: queued as QF\r\n221 bye\r\n", 3 * MS),
    ];
    let mut smtp = Smtp::new(Privacy::default(), start);
    let events = feed(&mut smtp, steps, usize::MAX);
    assert_eq!(
        said(&events),
        [
            &cmd("QUIT", "", 2 * MS),
            &rep("250", None, "Ok: queued as QF", 3 * MS, None),
            &rep("221", None, "bye", 3 * MS, Some(MS)),
        ]
    );
    assert_chunk_invariant(Privacy::default(), start, steps);
}
