//! Struct member offsets of the running kernel, from its BTF. Rust eBPF gets no CO-RE
//! relocations, so the agent resolves the few offsets the probes need at start-up and
//! hands them over as load-time constants (ENGINEERING.md §4).

use btf_rs::{Backend, Btf, Struct, Type};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("kernel BTF is not readable at {path} (CONFIG_DEBUG_INFO_BTF off?): {source}")]
    Open {
        path: String,
        #[source]
        source: anyhow::Error,
    },
    #[error("struct {structure} is not in the kernel's BTF")]
    NoStruct { structure: String },
    #[error("{structure}.{member} is not in the kernel's BTF")]
    NoMember { structure: String, member: String },
    #[error("{structure}.{member} is {actual} bytes wide, expected {expected}")]
    Size {
        structure: String,
        member: String,
        actual: usize,
        expected: usize,
    },
}

/// A member's position inside its (outermost) struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberOffset {
    pub offset: u32,
    pub size: usize,
}

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self, BtfError> {
        Self::from_file(VMLINUX_BTF)
    }

    /// Mapped, not parsed: the agent needs a handful of members, and a full parse of a
    /// 6 MB vmlinux BTF builds ~40 MB of tables (the agent's start-up peak). Kernels that
    /// cannot map the sysfs file (mmap of /sys/kernel/btf/vmlinux arrived in 6.16) get
    /// the full parse.
    pub fn from_file(path: &str) -> Result<Self, BtfError> {
        Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file_with_backend(path, Backend::Cache))
            .map(|btf| KernelBtf { btf })
            .map_err(|source| BtfError::Open {
                path: path.to_string(),
                source: source.into(),
            })
    }

    /// Offset of `member` in `struct structure`, looking through anonymous
    /// structs/unions, checked to be `expected_size` bytes wide.
    pub fn member(
        &self,
        structure: &str,
        member: &str,
        expected_size: usize,
    ) -> Result<MemberOffset, BtfError> {
        let no_struct = || BtfError::NoStruct {
            structure: structure.to_string(),
        };
        let types = self
            .btf
            .resolve_types_by_name(structure)
            .map_err(|_| no_struct())?;
        let s = types
            .iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(no_struct)?;
        let (bits, size) = self.find(s, member, 0).ok_or_else(|| BtfError::NoMember {
            structure: structure.to_string(),
            member: member.to_string(),
        })?;
        if size != expected_size {
            return Err(BtfError::Size {
                structure: structure.to_string(),
                member: member.to_string(),
                actual: size,
                expected: expected_size,
            });
        }
        Ok(MemberOffset {
            offset: bits / 8,
            size,
        })
    }

    /// (bit offset, byte size) of `member`, recursing into anonymous members.
    fn find(&self, s: &Struct, member: &str, base_bits: u32) -> Option<(u32, usize)> {
        for m in &s.members {
            if m.bitfield_size().is_some_and(|b| b != 0) {
                continue;
            }
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let bits = base_bits + m.bit_offset();
            let ty = self.btf.resolve_chained_type(m).ok()?;
            if name == member {
                return self.size_of(ty).map(|size| (bits, size));
            }
            if name.is_empty() {
                if let Type::Struct(inner) | Type::Union(inner) = ty {
                    if let Some(found) = self.find(&inner, member, bits) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    fn size_of(&self, mut ty: Type) -> Option<usize> {
        // Typedefs and qualifiers chain to the real type; bounded against loops.
        for _ in 0..16 {
            ty = match ty {
                Type::Int(i) => return Some(i.size()),
                Type::Enum(e) => return Some(e.size()),
                Type::Enum64(e) => return Some(e.size()),
                Type::Struct(s) | Type::Union(s) => return Some(s.size()),
                Type::Ptr(_) => return Some(std::mem::size_of::<usize>()),
                Type::Typedef(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Volatile(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Const(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Restrict(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::TypeTag(t) => self.btf.resolve_chained_type(&t).ok()?,
                _ => return None,
            };
        }
        None
    }
}
