//! The `sk_lookup` program, assembled here rather than compiled: the build needs no clang and
//! no BPF toolchain. Its C equivalent (also in `docs/steering.md`), which it follows
//! instruction by instruction:
//!
//! ```c
//! struct key { __u32 addr[4]; __u32 port; };   /* IPv4 as ::ffff:a.b.c.d; all zero: any */
//! struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, struct key); __type(value, __u32); } ports SEC(".maps");
//! struct { __uint(type, BPF_MAP_TYPE_SOCKMAP); __uint(max_entries, 2); __type(key, __u32); __type(value, __u64); } listeners SEC(".maps");
//!
//! SEC("sk_lookup")
//! int anyedge_steer(struct bpf_sk_lookup *ctx)
//! {
//!     struct key k;
//!     if (ctx->protocol != IPPROTO_TCP)
//!         return SK_PASS;
//!     if (ctx->family == AF_INET) {
//!         k.addr[0] = 0; k.addr[1] = 0; k.addr[2] = bpf_htonl(0xffff);
//!         k.addr[3] = ctx->local_ip4;
//!     } else {
//!         k.addr[0] = ctx->local_ip6[0]; k.addr[1] = ctx->local_ip6[1];
//!         k.addr[2] = ctx->local_ip6[2]; k.addr[3] = ctx->local_ip6[3];
//!     }
//!     k.port = ctx->local_port;                       /* host byte order */
//!     if (!bpf_map_lookup_elem(&ports, &k)) {          /* this address and port */
//!         k.addr[0] = k.addr[1] = k.addr[2] = k.addr[3] = 0;
//!         if (!bpf_map_lookup_elem(&ports, &k))        /* the port on every address */
//!             return SK_PASS;                          /* not ours: the usual lookup */
//!     }
//!     __u32 slot = ctx->family == AF_INET6 ? 1 : 0;
//!     struct bpf_sock *sk = bpf_map_lookup_elem(&listeners, &slot);
//!     if (!sk)
//!         return SK_PASS;                              /* no listener (node down): refused */
//!     bpf_sk_assign(ctx, sk, 0);
//!     bpf_sk_release(sk);
//!     return SK_PASS;
//! }
//! ```

use crate::asm::{Asm, FP, R0, R1, R2, R3, R6, R7};

// Offsets in `struct bpf_sk_lookup` (linux/bpf.h).
const FAMILY: i16 = 8;
const PROTOCOL: i16 = 12;
const LOCAL_IP4: i16 = 40;
const LOCAL_IP6: i16 = 44;
const LOCAL_PORT: i16 = 60;

const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const IPPROTO_TCP: i32 = 6;
const SK_PASS: i32 = 1;

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_SK_RELEASE: i32 = 86;
const HELPER_SK_ASSIGN: i32 = 124;

/// The port key on the stack: 16 address bytes, then the port.
const KEY: i16 = -24;
const KEY_PORT: i16 = KEY + 16;
/// The listener slot on the stack.
const SLOT: i16 = -32;
/// `::ffff:0:0`'s third word as the machine stores it: bytes 00 00 ff ff.
const V4_MAPPED_WORD: i32 = i32::from_le_bytes([0, 0, 0xff, 0xff]);

/// The program's instructions, for the maps with descriptors `ports` and `listeners`.
pub(crate) fn steer(ports: i32, listeners: i32) -> Vec<u64> {
    let mut a = Asm::default();
    let (pass, v6, port, found, slot) = (
        a.new_label(),
        a.new_label(),
        a.new_label(),
        a.new_label(),
        a.new_label(),
    );
    a.mov(R6, R1);
    a.load32(R2, R6, PROTOCOL).jne_imm(R2, IPPROTO_TCP, pass);
    a.load32(R2, R6, FAMILY).jne_imm(R2, AF_INET, v6);
    a.store32_imm(FP, KEY, 0)
        .store32_imm(FP, KEY + 4, 0)
        .store32_imm(FP, KEY + 8, V4_MAPPED_WORD);
    a.load32(R3, R6, LOCAL_IP4)
        .store32(FP, KEY + 12, R3)
        .ja(port);
    a.label(v6);
    for word in 0..4 {
        a.load32(R3, R6, LOCAL_IP6 + 4 * word)
            .store32(FP, KEY + 4 * word, R3);
    }
    a.label(port);
    a.load32(R3, R6, LOCAL_PORT).store32(FP, KEY_PORT, R3);
    lookup(&mut a, ports, KEY).jne_imm(R0, 0, found);
    for word in 0..4 {
        a.store32_imm(FP, KEY + 4 * word, 0);
    }
    lookup(&mut a, ports, KEY).jeq_imm(R0, 0, pass);
    a.label(found);
    a.mov_imm(R3, 0);
    a.load32(R2, R6, FAMILY).jne_imm(R2, AF_INET6, slot);
    a.mov_imm(R3, 1);
    a.label(slot).store32(FP, SLOT, R3);
    lookup(&mut a, listeners, SLOT).jeq_imm(R0, 0, pass);
    a.mov(R7, R0);
    a.mov(R1, R6)
        .mov(R2, R7)
        .mov_imm(R3, 0)
        .call(HELPER_SK_ASSIGN);
    a.mov(R1, R7).call(HELPER_SK_RELEASE);
    a.label(pass).mov_imm(R0, SK_PASS).exit();
    a.finish()
}

/// `r0 = bpf_map_lookup_elem(map, fp + key)`.
fn lookup(a: &mut Asm, map: i32, key: i16) -> &mut Asm {
    a.load_map(R1, map)
        .mov(R2, FP)
        .add_imm(R2, i32::from(key))
        .call(HELPER_MAP_LOOKUP_ELEM)
}

#[cfg(test)]
mod tests {
    #[test]
    fn assembles_with_every_jump_resolved() {
        let insns = super::steer(3, 4);
        // The last two instructions: r0 = SK_PASS; exit.
        let n = insns.len();
        assert_eq!(insns[n - 2].to_le_bytes(), [0xb7, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(insns[n - 1].to_le_bytes()[0], 0x95);
        assert!(n < 80, "{n} instructions");
    }
}
