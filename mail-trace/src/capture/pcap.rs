//! Replay source: pcap and pcapng files (pcap-file crate), as [`super::Frame`]s.
