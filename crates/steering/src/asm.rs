//! A tiny typed builder for eBPF instructions: only the forms the steering program uses
//! (32-bit loads and stores, 64-bit moves and adds, conditional jumps to labels, helper calls,
//! map references), each encoded as the kernel's `struct bpf_insn` (opcode, dst/src nibbles,
//! 16-bit offset, 32-bit immediate) in one `u64`, little-endian like the machine.

/// A register: `R0` (return value), `R1`–`R5` (helper arguments, clobbered by calls),
/// `R6`–`R9` (kept across calls), `R10` (read-only frame pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reg(u8);

pub(crate) const R0: Reg = Reg(0);
pub(crate) const R1: Reg = Reg(1);
pub(crate) const R2: Reg = Reg(2);
pub(crate) const R3: Reg = Reg(3);
pub(crate) const R6: Reg = Reg(6);
pub(crate) const R7: Reg = Reg(7);
pub(crate) const FP: Reg = Reg(10);

// Instruction classes, sizes, modes, operations and sources (linux/bpf_common.h, linux/bpf.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const DW: u8 = 0x18;
const IMM: u8 = 0x00;
const MEM: u8 = 0x60;
const ADD: u8 = 0x00;
const MOV: u8 = 0xb0;
const JEQ: u8 = 0x10;
const JNE: u8 = 0x50;
const JA: u8 = 0x00;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
const K: u8 = 0x00;
const X: u8 = 0x08;
/// `src_reg` of a 64-bit immediate load naming a map by descriptor.
const PSEUDO_MAP_FD: u8 = 1;

/// A jump target, placed with [`Asm::label`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Label(usize);

#[derive(Debug, Default)]
pub(crate) struct Asm {
    insns: Vec<u64>,
    labels: Vec<Option<usize>>,
    /// (instruction index, label) of each jump to patch.
    fixups: Vec<(usize, Label)>,
}

fn encode(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst.0 & 0xf) << 8
        | u64::from(src.0 & 0xf) << 12
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

impl Asm {
    fn push(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> &mut Self {
        self.insns.push(encode(code, dst, src, off, imm));
        self
    }

    pub fn new_label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Place `l` at the next instruction.
    pub fn label(&mut self, l: Label) -> &mut Self {
        self.labels[l.0] = Some(self.insns.len());
        self
    }

    /// `dst = src` (64-bit).
    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(ALU64 | MOV | X, dst, src, 0, 0)
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(ALU64 | MOV | K, dst, R0, 0, imm)
    }

    /// `dst += imm` (64-bit).
    pub fn add_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(ALU64 | ADD | K, dst, R0, 0, imm)
    }

    /// `dst = *(u32 *)(src + off)`.
    pub fn load32(&mut self, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.push(LDX | MEM | W, dst, src, off, 0)
    }

    /// `*(u32 *)(dst + off) = src`.
    pub fn store32(&mut self, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(STX | MEM | W, dst, src, off, 0)
    }

    /// `*(u32 *)(dst + off) = imm`.
    pub fn store32_imm(&mut self, dst: Reg, off: i16, imm: i32) -> &mut Self {
        self.push(ST | MEM | W, dst, R0, off, imm)
    }

    /// `dst = map` (the map's address, resolved by the kernel from its descriptor): two slots.
    pub fn load_map(&mut self, dst: Reg, map_fd: i32) -> &mut Self {
        self.push(LD | DW | IMM, dst, Reg(PSEUDO_MAP_FD), 0, map_fd);
        self.push(0, R0, R0, 0, 0)
    }

    fn jump(&mut self, code: u8, dst: Reg, imm: i32, to: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), to));
        self.push(code, dst, R0, 0, imm)
    }

    /// `if dst == imm goto to`.
    pub fn jeq_imm(&mut self, dst: Reg, imm: i32, to: Label) -> &mut Self {
        self.jump(JMP | JEQ | K, dst, imm, to)
    }

    /// `if dst != imm goto to`.
    pub fn jne_imm(&mut self, dst: Reg, imm: i32, to: Label) -> &mut Self {
        self.jump(JMP | JNE | K, dst, imm, to)
    }

    /// `goto to`.
    pub fn ja(&mut self, to: Label) -> &mut Self {
        self.jump(JMP | JA, R0, 0, to)
    }

    /// Call helper number `helper` (arguments in R1–R5, result in R0).
    pub fn call(&mut self, helper: i32) -> &mut Self {
        self.push(JMP | CALL, R0, R0, 0, helper)
    }

    pub fn exit(&mut self) -> &mut Self {
        self.push(JMP | EXIT, R0, R0, 0, 0)
    }

    /// The instructions, jumps resolved. Panics on a label never placed or out of range: a
    /// bug in the fixed program, found by its unit test, never by input.
    #[allow(clippy::expect_used)]
    pub fn finish(mut self) -> Vec<u64> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[label.0].expect("every label is placed");
            let off = i16::try_from(target as isize - at as isize - 1).expect("jump in range");
            self.insns[at] &= !(0xffff << 16);
            self.insns[at] |= u64::from(off as u16) << 16;
        }
        self.insns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_kernel_headers() {
        // r0 = 1; exit  ==  b7 00 00 00 01 00 00 00, 95 00 00 00 00 00 00 00
        let mut a = Asm::default();
        a.mov_imm(R0, 1).exit();
        let insns = a.finish();
        assert_eq!(insns[0].to_le_bytes(), [0xb7, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(insns[1].to_le_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn registers_offsets_and_jumps() {
        let mut a = Asm::default();
        let end = a.new_label();
        // r2 = *(u32 *)(r6 + 12): 61 62 0c 00 00 00 00 00
        a.load32(R2, R6, 12);
        // if r2 != 6 goto end (one instruction ahead): 55 02 01 00 06 00 00 00
        a.jne_imm(R2, 6, end);
        // *(u32 *)(r10 - 8) = r3: 63 3a f8 ff 00 00 00 00
        a.store32(FP, -8, R3);
        a.label(end).exit();
        let insns = a.finish();
        assert_eq!(insns[0].to_le_bytes(), [0x61, 0x62, 12, 0, 0, 0, 0, 0]);
        assert_eq!(insns[1].to_le_bytes(), [0x55, 0x02, 1, 0, 6, 0, 0, 0]);
        assert_eq!(insns[2].to_le_bytes(), [0x63, 0x3a, 0xf8, 0xff, 0, 0, 0, 0]);
    }
}
