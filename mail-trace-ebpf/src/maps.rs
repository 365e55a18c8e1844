//! The kernel objects shared with userspace; names and layouts come from
//! `mail-trace-common` so both sides agree.
use crate::parse::Tcp;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use mail_trace_common::{
    Config, Counters, FlowKey, PortBits, TlsFlow, MAX_HOSTS, MAX_IFACES, MAX_TLS_FLOWS,
};

/// Resized by the loader (`--ring-size`); this is only the default.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// One byte per port: an array lookup is cheaper than a hash on every packet.
#[map]
pub static PORTS: Array<u8> = Array::with_max_entries(65536, 0);

/// The same ports as a bitmap, for the check every packet gets.
#[map]
pub static MAIL_PORTS: Array<PortBits> = Array::with_max_entries(1, 0);

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
pub static HOSTS4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_HOSTS, 0);

#[map]
pub static HOSTS6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_HOSTS, 0);

#[map]
pub static IFACES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IFACES, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Where the TC programs parse a packet's headers (see `main.rs`, `tc`); kernel-only.
#[map]
pub static HEADERS: PerCpuArray<Tcp> = PerCpuArray::with_max_entries(1, 0);

/// Flows whose payload is encrypted (see `tls.rs`); userspace only reads it.
#[map]
pub static TLS_FLOWS: LruHashMap<FlowKey, TlsFlow> = LruHashMap::with_max_entries(MAX_TLS_FLOWS, 0);
