//! OCI platforms (`linux/arm/v7`), which image platforms a host can run, and
//! the platform of an ELF executable.
//!
//! Names follow Go's `GOOS`/`GOARCH` as the OCI image spec does, normalised
//! the way containerd does (`aarch64` is `arm64`, `arm64/v8` is `arm64`,
//! `armhf` is `arm/v7`...).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Operating systems [`Platform::parse`] accepts (Go's `GOOS` values).
const KNOWN_OS: &[&str] = &[
    "linux",
    "windows",
    "darwin",
    "freebsd",
    "netbsd",
    "openbsd",
    "dragonfly",
    "solaris",
    "illumos",
    "aix",
    "android",
    "ios",
    "plan9",
    "js",
    "wasip1",
];

/// Architectures [`Platform::parse`] accepts once aliases are resolved (Go's `GOARCH`).
const KNOWN_ARCH: &[&str] = &[
    "amd64", "arm64", "arm", "386", "riscv64", "ppc64le", "ppc64", "s390x", "mips", "mipsle",
    "mips64", "mips64le", "loong64", "wasm",
];

/// An OCI platform: operating system, architecture and optional variant.
///
/// Always normalised: `arm64` has no `v8` variant, `amd64` has no `v1`
/// variant, `arm` variants are `v5`..`v8` (`None` when unknown).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "PlatformFields")]
pub struct Platform {
    os: String,
    architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

/// The serialised form, normalised into a [`Platform`] on the way in.
#[derive(Deserialize)]
struct PlatformFields {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl From<PlatformFields> for Platform {
    fn from(fields: PlatformFields) -> Self {
        Platform::new(&fields.os, &fields.architecture, fields.variant.as_deref())
    }
}

/// Errors about platforms and ELF executables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// A platform string that could not be parsed.
    #[error("invalid platform {input:?}: {reason}")]
    Invalid {
        /// The rejected input.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The data does not start with the ELF magic number.
    #[error("not an ELF executable")]
    NotElf,
    /// The ELF structures extend beyond the bytes given.
    #[error(
        "truncated ELF file: {what} needs the first {needed} bytes but only {available} were given"
    )]
    TruncatedElf {
        /// Which structure is cut short.
        what: &'static str,
        /// How many bytes from the start of the file are needed to read it.
        needed: u64,
        /// How many bytes were given.
        available: usize,
    },
    /// A well-formed ELF file that is not something an image can run.
    #[error("unsupported ELF file: {0}")]
    UnsupportedElf(String),
}

impl Platform {
    /// A normalised platform. Unknown names are kept (lowercased), so that
    /// platforms read from images in the wild (`unknown/unknown`) survive.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let os = match os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_owned(),
            other => other.to_owned(),
        };
        let variant = variant
            .filter(|v| !v.is_empty())
            .map(str::to_ascii_lowercase);
        let (architecture, alias_variant) = resolve_arch_alias(&architecture.to_ascii_lowercase());
        let variant = variant.or(alias_variant.map(str::to_owned));
        let variant = normalise_variant(&architecture, variant);
        Self {
            os,
            architecture,
            variant,
        }
    }

    /// The platform of this host: the architecture this binary was compiled
    /// for (`linux/amd64`, `linux/arm64`, `linux/arm/v7`...). For 32-bit arm
    /// the variant comes from the CPU, as containerd does it (`/proc/cpuinfo`:
    /// `v6` on a Pi Zero/1, `v7` on a Pi 2, `v8` on a Pi 3/4/5 running a
    /// 32-bit system; `v7` if it cannot be read), because stable Rust exposes
    /// no `cfg` telling an ARMv6 target from an ARMv7 one.
    pub fn host() -> Self {
        let os = std::env::consts::OS;
        if cfg!(target_arch = "x86_64") {
            Self::new(os, "amd64", None)
        } else if cfg!(target_arch = "aarch64") {
            Self::new(os, "arm64", None)
        } else if cfg!(target_arch = "arm") {
            Self::new(os, "arm", Some(host_arm_variant()))
        } else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
            Self::new(os, "ppc64le", None)
        } else {
            let arch = match std::env::consts::ARCH {
                "x86" => "386",
                "powerpc64" => "ppc64",
                "powerpc" => "ppc",
                "loongarch64" => "loong64",
                "mips" if cfg!(target_endian = "little") => "mipsle",
                "mips64" if cfg!(target_endian = "little") => "mips64le",
                "wasm32" => "wasm",
                other => other,
            };
            Self::new(os, arch, None)
        }
    }

    /// Parses `[os/]arch[/variant]`: `linux/arm/v7`, `arm64`, `linux/arm64/v8`,
    /// `aarch64`, `x86_64`, `armhf`, `arm/v6`... The os defaults to `linux`;
    /// a lone os name (`linux`) means that os on the host's architecture, as
    /// containerd has it.
    pub fn parse(s: &str) -> Result<Self, PlatformError> {
        let invalid = |reason: String| PlatformError::Invalid {
            input: s.to_owned(),
            reason,
        };
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid(
                "expected os/architecture[/variant], e.g. linux/arm64 or linux/arm/v7".to_owned(),
            ));
        }
        let (os, arch, variant) = match parts.as_slice() {
            [one] if KNOWN_OS.contains(one) => {
                let host = Self::host();
                return Ok(Self::new(one, &host.architecture, host.variant.as_deref()));
            }
            [arch] => ("linux", *arch, None),
            // "arm/v7": an architecture and a variant, on linux.
            [first, second] if !KNOWN_OS.contains(first) && is_known_arch(first) => {
                ("linux", *first, Some(*second))
            }
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            _ => {
                return Err(invalid(
                    "too many '/': expected os/architecture[/variant]".to_owned(),
                ));
            }
        };
        if !KNOWN_OS.contains(&os) {
            return Err(invalid(format!("unknown operating system {os:?}")));
        }
        if !is_known_arch(arch) {
            return Err(invalid(format!("unknown architecture {arch:?}")));
        }
        let (resolved, alias_variant) = resolve_arch_alias(arch);
        if let (Some(given), Some(implied)) = (variant, alias_variant)
            && normalise_variant(&resolved, Some(given.to_owned()))
                != normalise_variant(&resolved, Some(implied.to_owned()))
        {
            return Err(invalid(format!(
                "variant {given:?} contradicts {arch:?}, which means {resolved}/{implied}"
            )));
        }
        if let Some(variant) = variant
            && !variant_is_valid(&resolved, variant)
        {
            return Err(invalid(format!(
                "unknown variant {variant:?} for architecture {resolved}"
            )));
        }
        Ok(Self::new(os, arch, variant.or(alias_variant)))
    }

    /// The operating system: `linux`.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The architecture: `amd64`, `arm64`, `arm`...
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The variant: `v7` for `arm/v7`; `None` for `arm64` and `amd64`.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// Whether an image built for `image` runs on this (host) platform, and
    /// how preferable it is: `Some(0)` is a native match, higher is worse,
    /// `None` cannot run. Mirrors containerd's default matcher: an `arm64`
    /// host also runs 32-bit `arm/v7` (1), `arm/v6` (2) and `arm/v5` (3); an
    /// `arm/vN` host runs older arm variants; an `arm` image without a
    /// variant counts as `arm/v7`.
    pub fn run_rank(&self, image: &Platform) -> Option<u8> {
        if self.os != image.os {
            return None;
        }
        match (self.architecture.as_str(), image.architecture.as_str()) {
            ("arm64", "arm64") => {
                (image.variant.is_none() || image.variant == self.variant).then_some(0)
            }
            ("arm64", "arm") => {
                let image_level = arm_level(image.variant())?;
                (5..=7).contains(&image_level).then(|| 1 + 7 - image_level)
            }
            ("arm", "arm") => {
                let host_level = arm_level(self.variant())?;
                let image_level = arm_level(image.variant())?;
                (image_level <= host_level).then(|| host_level - image_level)
            }
            ("amd64", "amd64") => {
                let host_level = amd64_level(self.variant())?;
                let image_level = amd64_level(image.variant())?;
                (image_level <= host_level).then(|| host_level - image_level)
            }
            (host, other) if host == other => {
                (image.variant.is_none() || image.variant == self.variant).then_some(0)
            }
            _ => None,
        }
    }

    /// Reads an ELF executable's header and program headers: its platform
    /// and whether it is dynamically linked. `bytes` must hold the file from
    /// its start up to the end of the program headers and of the interpreter
    /// path ([`PlatformError::TruncatedElf`] tells how much is needed).
    pub fn from_elf(bytes: &[u8]) -> Result<ElfInfo, PlatformError> {
        parse_elf(bytes)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The arm variant of this machine's CPU, read once.
fn host_arm_variant() -> &'static str {
    static VARIANT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    VARIANT.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|cpuinfo| arm_variant_from_cpuinfo(&cpuinfo))
            .unwrap_or("v7")
    })
}

/// The arm variant from `/proc/cpuinfo`'s `CPU architecture` field, as
/// containerd's `getCPUVariant` reads it, including the Raspberry Pi 1/Zero
/// quirk (an ARMv6 CPU that reports architecture 7).
fn arm_variant_from_cpuinfo(cpuinfo: &str) -> Option<&'static str> {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_ascii_lowercase())
        })
    };
    let variant = match field("CPU architecture")?.as_str() {
        "8" | "aarch64" => "v8",
        "7" | "7m" | "?(12)" | "?(13)" | "?(14)" | "?(15)" | "?(16)" | "?(17)" => "v7",
        "6" | "6tej" => "v6",
        "5" | "5t" | "5te" | "5tej" => "v5",
        _ => return None,
    };
    let armv6_model = field("model name").is_some_and(|m| m.starts_with("armv6-compatible"));
    Some(if variant == "v7" && armv6_model {
        "v6"
    } else {
        variant
    })
}

fn is_known_arch(arch: &str) -> bool {
    KNOWN_ARCH.contains(&resolve_arch_alias(arch).0.as_str())
}

/// Maps architecture aliases to the GOARCH name, with the variant they imply.
fn resolve_arch_alias(arch: &str) -> (String, Option<&'static str>) {
    let (resolved, variant) = match arch {
        "aarch64" | "arm64" => ("arm64", None),
        "x86_64" | "x86-64" | "amd64" => ("amd64", None),
        "armhf" | "armv7" | "armv7l" | "armv7hl" => ("arm", Some("v7")),
        "armel" | "armv6" | "armv6l" => ("arm", Some("v6")),
        "armv5" | "armv5l" | "armv5tel" => ("arm", Some("v5")),
        "i386" | "i486" | "i586" | "i686" | "386" | "x86" => ("386", None),
        "ppc64el" => ("ppc64le", None),
        "loongarch64" => ("loong64", None),
        other => return (other.to_owned(), None),
    };
    (resolved.to_owned(), variant)
}

/// containerd's variant normalisation: `arm64/v8` and `amd64/v1` have no
/// variant, bare digits get a `v`.
fn normalise_variant(arch: &str, variant: Option<String>) -> Option<String> {
    let variant = variant?;
    let with_v = if variant.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        format!("v{variant}")
    } else {
        variant
    };
    match (arch, with_v.as_str()) {
        ("arm64", "v8") | ("amd64", "v1") => None,
        _ => Some(with_v),
    }
}

fn variant_is_valid(arch: &str, variant: &str) -> bool {
    let normalised = normalise_variant(arch, Some(variant.to_owned()));
    match (arch, normalised.as_deref()) {
        (_, None) => true,
        ("arm", Some(v)) => matches!(v, "v5" | "v6" | "v7" | "v8"),
        ("arm64", Some(v)) => {
            // v8.1 .. v8.9, v9, v9.1 .. v9.5
            let rest = v.strip_prefix("v8.").or_else(|| v.strip_prefix("v9."));
            v == "v9" || rest.is_some_and(|r| r.len() == 1 && r.as_bytes()[0].is_ascii_digit())
        }
        ("amd64", Some(v)) => matches!(v, "v2" | "v3" | "v4"),
        (_, Some(v)) => v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'),
    }
}

/// `arm` variants as numbers; no variant means v7.
fn arm_level(variant: Option<&str>) -> Option<u8> {
    match variant {
        None | Some("v7") => Some(7),
        Some("v5") => Some(5),
        Some("v6") => Some(6),
        Some("v8") => Some(8),
        Some(_) => None,
    }
}

/// `amd64` microarchitecture levels; no variant means v1.
fn amd64_level(variant: Option<&str>) -> Option<u8> {
    match variant {
        None | Some("v1") => Some(1),
        Some("v2") => Some(2),
        Some("v3") => Some(3),
        Some("v4") => Some(4),
        Some(_) => None,
    }
}

/// ELF file class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfClass {
    /// ELFCLASS32.
    Elf32,
    /// ELFCLASS64.
    Elf64,
}

/// Byte order of an ELF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// ELFDATA2LSB.
    Little,
    /// ELFDATA2MSB.
    Big,
}

/// What [`Platform::from_elf`] learnt about an executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// The platform it runs on. For 32-bit ARM the variant is unknown (`None`).
    pub platform: Platform,
    /// 32 or 64 bit.
    pub class: ElfClass,
    /// Byte order.
    pub endian: Endian,
    /// `true` for a position-independent executable (ET_DYN), including
    /// static-pie; `false` for ET_EXEC.
    pub position_independent: bool,
    /// The dynamic loader it asks for (PT_INTERP), e.g.
    /// `/lib/ld-linux-aarch64.so.1`; `None` for a static executable.
    pub interpreter: Option<String>,
}

impl ElfInfo {
    /// Whether it runs without shared libraries (it has no PT_INTERP).
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none()
    }
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;
const PN_XNUM: u16 = 0xffff;
const EM_386: u16 = 3;
const EM_MIPS: u16 = 8;
const EM_PPC64: u16 = 21;
const EM_S390: u16 = 22;
const EM_ARM: u16 = 40;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const EM_RISCV: u16 = 243;
const EM_LOONGARCH: u16 = 258;
const ELFOSABI_FREEBSD: u8 = 9;
/// Longest interpreter path believed (PATH_MAX).
const INTERP_MAX: u64 = 4096;

/// Bounds-checked reads of an ELF file's bytes in its byte order.
struct ElfBytes<'a> {
    bytes: &'a [u8],
    endian: Endian,
}

impl ElfBytes<'_> {
    fn slice(&self, offset: u64, len: u64, what: &'static str) -> Result<&[u8], PlatformError> {
        let end = offset.checked_add(len).ok_or_else(|| {
            PlatformError::UnsupportedElf(format!("{what} lies beyond any possible file size"))
        })?;
        let truncated = || PlatformError::TruncatedElf {
            what,
            needed: end,
            available: self.bytes.len(),
        };
        let start = usize::try_from(offset).map_err(|_| truncated())?;
        let stop = usize::try_from(end).map_err(|_| truncated())?;
        self.bytes.get(start..stop).ok_or_else(truncated)
    }

    fn array<const N: usize>(
        &self,
        offset: u64,
        what: &'static str,
    ) -> Result<[u8; N], PlatformError> {
        let slice = self.slice(offset, N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u16(&self, offset: u64, what: &'static str) -> Result<u16, PlatformError> {
        let b = self.array::<2>(offset, what)?;
        Ok(match self.endian {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        })
    }

    fn u32(&self, offset: u64, what: &'static str) -> Result<u32, PlatformError> {
        let b = self.array::<4>(offset, what)?;
        Ok(match self.endian {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        })
    }

    fn u64(&self, offset: u64, what: &'static str) -> Result<u64, PlatformError> {
        let b = self.array::<8>(offset, what)?;
        Ok(match self.endian {
            Endian::Little => u64::from_le_bytes(b),
            Endian::Big => u64::from_be_bytes(b),
        })
    }

    /// A 32-bit or 64-bit address-sized field.
    fn word(&self, class: ElfClass, offset: u64, what: &'static str) -> Result<u64, PlatformError> {
        match class {
            ElfClass::Elf32 => self.u32(offset, what).map(u64::from),
            ElfClass::Elf64 => self.u64(offset, what),
        }
    }
}

fn parse_elf(bytes: &[u8]) -> Result<ElfInfo, PlatformError> {
    if bytes.get(..4) != Some(ELF_MAGIC.as_slice()) {
        return Err(PlatformError::NotElf);
    }
    let unsupported = |what: String| Err(PlatformError::UnsupportedElf(what));
    let ident = |i: usize, what: &'static str| {
        bytes.get(i).copied().ok_or(PlatformError::TruncatedElf {
            what,
            needed: 16,
            available: bytes.len(),
        })
    };
    let class = match ident(4, "the ELF identification")? {
        1 => ElfClass::Elf32,
        2 => ElfClass::Elf64,
        other => return unsupported(format!("unknown ELF class {other}")),
    };
    let endian = match ident(5, "the ELF identification")? {
        1 => Endian::Little,
        2 => Endian::Big,
        other => return unsupported(format!("unknown ELF data encoding {other}")),
    };
    let os_abi = ident(7, "the ELF identification")?;
    let elf = ElfBytes { bytes, endian };
    let what = "the ELF header";
    let e_type = elf.u16(16, what)?;
    let e_machine = elf.u16(18, what)?;
    // Offsets of e_phoff, e_phentsize and e_phnum, and the size of one program header.
    let (phoff_at, phentsize_at, phnum_at, phdr_min) = match class {
        ElfClass::Elf32 => (28, 42, 44, 32),
        ElfClass::Elf64 => (32, 54, 56, 56),
    };
    let phoff = elf.word(class, phoff_at, what)?;
    let phentsize = elf.u16(phentsize_at, what)?;
    let phnum = elf.u16(phnum_at, what)?;

    let position_independent = match e_type {
        ET_EXEC => false,
        ET_DYN => true,
        1 => return unsupported("a relocatable object file, not an executable".to_owned()),
        4 => return unsupported("a core dump, not an executable".to_owned()),
        other => return unsupported(format!("ELF type {other} is not an executable")),
    };

    let architecture = match (e_machine, class) {
        (EM_X86_64, ElfClass::Elf64) => "amd64",
        (EM_AARCH64, ElfClass::Elf64) => "arm64",
        (EM_ARM, ElfClass::Elf32) => "arm",
        (EM_386, ElfClass::Elf32) => "386",
        (EM_RISCV, ElfClass::Elf64) => "riscv64",
        (EM_PPC64, ElfClass::Elf64) if endian == Endian::Little => "ppc64le",
        (EM_PPC64, ElfClass::Elf64) => "ppc64",
        (EM_S390, ElfClass::Elf64) => "s390x",
        (EM_LOONGARCH, ElfClass::Elf64) => "loong64",
        (EM_MIPS, ElfClass::Elf32) if endian == Endian::Little => "mipsle",
        (EM_MIPS, ElfClass::Elf32) => "mips",
        (EM_MIPS, ElfClass::Elf64) if endian == Endian::Little => "mips64le",
        (EM_MIPS, ElfClass::Elf64) => "mips64",
        (machine, class) => {
            let bits = if class == ElfClass::Elf64 { 64 } else { 32 };
            return unsupported(format!("machine {machine} in a {bits}-bit ELF file"));
        }
    };
    let os = if os_abi == ELFOSABI_FREEBSD {
        "freebsd"
    } else {
        "linux"
    };

    if phnum == PN_XNUM {
        return unsupported("more than 65534 program headers".to_owned());
    }
    if phnum > 0 && u64::from(phentsize) < phdr_min {
        return unsupported(format!(
            "program header entries of {phentsize} bytes, less than the {phdr_min} required"
        ));
    }
    let mut interpreter = None;
    for index in 0..u64::from(phnum) {
        let what = "the program headers";
        let at = index
            .checked_mul(u64::from(phentsize))
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(|| {
                PlatformError::UnsupportedElf(
                    "program headers beyond any possible file size".to_owned(),
                )
            })?;
        // Check the whole entry is there before reading fields from it.
        elf.slice(at, phdr_min, what)?;
        if elf.u32(at, what)? != PT_INTERP {
            continue;
        }
        let (offset_at, filesz_at) = match class {
            ElfClass::Elf32 => (4, 16),
            ElfClass::Elf64 => (8, 32),
        };
        let offset = elf.word(class, at + offset_at, what)?;
        let size = elf.word(class, at + filesz_at, what)?;
        if size > INTERP_MAX {
            return unsupported(format!("interpreter path of {size} bytes"));
        }
        let raw = elf.slice(offset, size, "the interpreter path (PT_INTERP)")?;
        let path = raw.split(|b| *b == 0).next().unwrap_or_default();
        interpreter = Some(String::from_utf8_lossy(path).into_owned());
        break;
    }

    Ok(ElfInfo {
        platform: Platform::new(os, architecture, None),
        class,
        endian,
        position_independent,
        interpreter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform::new(os, arch, variant)
    }

    #[test]
    fn parses_platforms_and_aliases() {
        let cases = [
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm", "linux/arm"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("linux/arm/v5", "linux/arm/v5"),
            ("arm/v6", "linux/arm/v6"),
            ("arm64/v8", "linux/arm64"),
            ("arm64", "linux/arm64"),
            ("linux/arm64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm64/8", "linux/arm64"),
            ("linux/arm64/v8.2", "linux/arm64/v8.2"),
            ("aarch64", "linux/arm64"),
            ("linux/aarch64", "linux/arm64"),
            ("x86_64", "linux/amd64"),
            ("x86-64", "linux/amd64"),
            ("amd64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("armhf", "linux/arm/v7"),
            ("armv7", "linux/arm/v7"),
            ("armv7l", "linux/arm/v7"),
            ("linux/armv7l", "linux/arm/v7"),
            ("linux/armhf/v7", "linux/arm/v7"),
            ("armel", "linux/arm/v6"),
            ("armv6", "linux/arm/v6"),
            ("armv6l", "linux/arm/v6"),
            ("i386", "linux/386"),
            ("386", "linux/386"),
            ("i686", "linux/386"),
            ("riscv64", "linux/riscv64"),
            ("ppc64le", "linux/ppc64le"),
            ("s390x", "linux/s390x"),
            ("LINUX/ARM64", "linux/arm64"),
            (" linux/arm/v7 ", "linux/arm/v7"),
            ("windows/amd64", "windows/amd64"),
            ("freebsd/arm64", "freebsd/arm64"),
        ];
        for (input, want) in cases {
            let got = Platform::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.to_string(), want, "{input}");
            assert_eq!(input.parse::<Platform>().unwrap(), got);
            // Display output parses back to the same platform.
            assert_eq!(Platform::parse(&got.to_string()).unwrap(), got, "{input}");
        }
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(v7.os(), "linux");
        assert_eq!(v7.architecture(), "arm");
        assert_eq!(v7.variant(), Some("v7"));
        assert_eq!(Platform::parse("arm64").unwrap().variant(), None);
        // A lone os is that os on the host's architecture.
        let host = Platform::host();
        assert_eq!(
            Platform::parse("linux").unwrap().architecture(),
            host.architecture()
        );
    }

    #[test]
    fn rejects_bad_platforms() {
        let cases = [
            ("", "expected os/architecture"),
            ("/", "expected os/architecture"),
            ("linux/", "expected os/architecture"),
            ("linux//v7", "expected os/architecture"),
            ("linux/arm/v7/x", "too many '/'"),
            ("sparc", "unknown architecture \"sparc\""),
            ("linux/amd46", "unknown architecture \"amd46\""),
            ("plan10/amd64", "unknown operating system \"plan10\""),
            (
                "linux/arm/v9",
                "unknown variant \"v9\" for architecture arm",
            ),
            (
                "linux/arm/hf",
                "unknown variant \"hf\" for architecture arm",
            ),
            (
                "linux/amd64/v7",
                "unknown variant \"v7\" for architecture amd64",
            ),
            (
                "linux/arm64/v7",
                "unknown variant \"v7\" for architecture arm64",
            ),
            ("linux/armv7/v6", "variant \"v6\" contradicts \"armv7\""),
        ];
        for (input, reason) in cases {
            let err = Platform::parse(input).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("invalid platform {input:?}: ")),
                "{message}"
            );
            assert!(message.contains(reason), "{input}: {message}");
        }
    }

    #[test]
    fn new_normalises_without_rejecting() {
        assert_eq!(p("linux", "aarch64", Some("v8")), p("linux", "arm64", None));
        assert_eq!(p("Linux", "ARMHF", None), p("linux", "arm", Some("v7")));
        assert_eq!(p("linux", "arm", Some("")), p("linux", "arm", None));
        assert_eq!(p("macos", "arm64", None).os(), "darwin");
        let unknown = p("unknown", "unknown", None);
        assert_eq!(unknown.to_string(), "unknown/unknown");
    }

    #[test]
    fn host_platform() {
        let host = Platform::host();
        assert_eq!(host.os(), std::env::consts::OS);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.to_string(), "linux/amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host.to_string(), "linux/arm64");
        }
        if cfg!(target_arch = "arm") {
            assert_eq!(host.architecture(), "arm");
            assert!(matches!(host.variant(), Some("v6" | "v7" | "v8")));
        }
        assert_eq!(host.run_rank(&host), Some(0));
    }

    #[test]
    fn arm_variant_from_cpuinfo_like_containerd() {
        let pi_zero = "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\n\
                       BogoMIPS\t: 697.95\nCPU architecture: 7\nCPU variant\t: 0x0\n";
        assert_eq!(arm_variant_from_cpuinfo(pi_zero), Some("v6"));
        let pi2 = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 5 (v7l)\n\
                   CPU architecture: 7\n";
        assert_eq!(arm_variant_from_cpuinfo(pi2), Some("v7"));
        let pi4_32bit = "model name\t: ARMv7 Processor rev 3 (v7l)\nCPU architecture: 8\n";
        assert_eq!(arm_variant_from_cpuinfo(pi4_32bit), Some("v8"));
        assert_eq!(
            arm_variant_from_cpuinfo("CPU architecture: 5TE\n"),
            Some("v5")
        );
        assert_eq!(arm_variant_from_cpuinfo("CPU architecture: 3\n"), None);
        assert_eq!(
            arm_variant_from_cpuinfo("vendor_id\t: GenuineIntel\n"),
            None
        );
        assert_eq!(arm_variant_from_cpuinfo(""), None);
    }

    #[test]
    fn serde_uses_oci_field_names() {
        let v7 = p("linux", "arm", Some("v7"));
        assert_eq!(
            serde_json::to_string(&v7).unwrap(),
            r#"{"os":"linux","architecture":"arm","variant":"v7"}"#
        );
        let arm64 = p("linux", "arm64", None);
        assert_eq!(
            serde_json::to_string(&arm64).unwrap(),
            r#"{"os":"linux","architecture":"arm64"}"#
        );
        let back: Platform = serde_json::from_str(
            r#"{"architecture":"arm64","os":"linux","variant":"v8","os.version":"x"}"#,
        )
        .unwrap();
        assert_eq!(back, arm64);
        let back: Platform =
            serde_json::from_str(r#"{"architecture":"arm","os":"linux","variant":null}"#).unwrap();
        assert_eq!(back, p("linux", "arm", None));
        assert!(serde_json::from_str::<Platform>(r#"{"os":"linux"}"#).is_err());
    }

    #[test]
    fn run_ranks() {
        let arm64 = Platform::parse("linux/arm64").unwrap();
        let arm64_v8 = p("linux", "arm64", Some("v8"));
        let arm64_v82 = Platform::parse("linux/arm64/v8.2").unwrap();
        let v8 = Platform::parse("linux/arm/v8").unwrap();
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        let v6 = Platform::parse("linux/arm/v6").unwrap();
        let v5 = Platform::parse("linux/arm/v5").unwrap();
        let arm = Platform::parse("linux/arm").unwrap();
        let amd64 = Platform::parse("linux/amd64").unwrap();
        let amd64_v3 = Platform::parse("linux/amd64/v3").unwrap();
        let i386 = Platform::parse("linux/386").unwrap();
        let riscv = Platform::parse("linux/riscv64").unwrap();
        let win = Platform::parse("windows/amd64").unwrap();

        let table: &[(&Platform, &Platform, Option<u8>)] = &[
            (&arm64, &arm64, Some(0)),
            (&arm64, &arm64_v8, Some(0)),
            (&arm64, &v7, Some(1)),
            (&arm64, &arm, Some(1)),
            (&arm64, &v6, Some(2)),
            (&arm64, &v5, Some(3)),
            (&arm64, &v8, None),
            (&arm64, &arm64_v82, None),
            (&arm64, &amd64, None),
            (&arm64, &riscv, None),
            (&arm64_v82, &arm64, Some(0)),
            (&v7, &v7, Some(0)),
            (&v7, &arm, Some(0)),
            (&v7, &v6, Some(1)),
            (&v7, &v5, Some(2)),
            (&v7, &arm64, None),
            (&v7, &v8, None),
            (&arm, &v7, Some(0)),
            (&v6, &v6, Some(0)),
            (&v6, &v5, Some(1)),
            (&v6, &v7, None),
            (&v6, &arm, None),
            (&v6, &arm64, None),
            (&v8, &v7, Some(1)),
            (&v5, &v5, Some(0)),
            (&amd64, &amd64, Some(0)),
            (&amd64, &amd64_v3, None),
            (&amd64_v3, &amd64, Some(2)),
            (&amd64_v3, &amd64_v3, Some(0)),
            (&amd64, &i386, None),
            (&amd64, &arm64, None),
            (&amd64, &win, None),
            (&win, &win, Some(0)),
            (&riscv, &riscv, Some(0)),
            (&i386, &i386, Some(0)),
        ];
        for (host, image, rank) in table {
            assert_eq!(host.run_rank(image), *rank, "{host} running {image}");
        }
    }

    /// A hand-made ELF file: header, program headers (optionally a PT_LOAD
    /// and a PT_INTERP) and the interpreter string.
    fn elf(
        class: ElfClass,
        endian: Endian,
        machine: u16,
        e_type: u16,
        interp: Option<&str>,
    ) -> Vec<u8> {
        let (ehsize, phentsize) = match class {
            ElfClass::Elf32 => (52usize, 32usize),
            ElfClass::Elf64 => (64, 56),
        };
        let phnum = if interp.is_some() { 2 } else { 1 };
        let interp_off = ehsize + phnum * phentsize;
        let interp_bytes: Vec<u8> = interp
            .map(|s| s.bytes().chain([0]).collect())
            .unwrap_or_default();
        let mut out = vec![0u8; interp_off];
        out.extend_from_slice(&interp_bytes);

        let put = |out: &mut Vec<u8>, at: usize, value: u64, width: usize| {
            let bytes = match endian {
                Endian::Little => value.to_le_bytes(),
                Endian::Big => value.to_be_bytes(),
            };
            let slice = match endian {
                Endian::Little => &bytes[..width],
                Endian::Big => &bytes[8 - width..],
            };
            out[at..at + width].copy_from_slice(slice);
        };
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = if class == ElfClass::Elf64 { 2 } else { 1 };
        out[5] = if endian == Endian::Little { 1 } else { 2 };
        out[6] = 1;
        put(&mut out, 16, u64::from(e_type), 2);
        put(&mut out, 18, u64::from(machine), 2);
        put(&mut out, 20, 1, 4);
        let word = if class == ElfClass::Elf64 { 8 } else { 4 };
        let (phoff_at, phentsize_at, phnum_at) = match class {
            ElfClass::Elf32 => (28, 42, 44),
            ElfClass::Elf64 => (32, 54, 56),
        };
        put(&mut out, phoff_at, ehsize as u64, word);
        put(&mut out, phentsize_at, phentsize as u64, 2);
        put(&mut out, phnum_at, phnum as u64, 2);
        // PT_LOAD first, then PT_INTERP.
        put(&mut out, ehsize, 1, 4);
        if interp.is_some() {
            let at = ehsize + phentsize;
            put(&mut out, at, u64::from(PT_INTERP), 4);
            let (off_at, filesz_at) = match class {
                ElfClass::Elf32 => (4, 16),
                ElfClass::Elf64 => (8, 32),
            };
            put(&mut out, at + off_at, interp_off as u64, word);
            put(&mut out, at + filesz_at, interp_bytes.len() as u64, word);
        }
        out
    }

    #[test]
    fn elf_machines() {
        use ElfClass::{Elf32, Elf64};
        use Endian::{Big, Little};
        let cases = [
            (Elf64, Little, EM_X86_64, "linux/amd64"),
            (Elf64, Little, EM_AARCH64, "linux/arm64"),
            (Elf32, Little, EM_ARM, "linux/arm"),
            (Elf32, Little, EM_386, "linux/386"),
            (Elf64, Little, EM_RISCV, "linux/riscv64"),
            (Elf64, Little, EM_PPC64, "linux/ppc64le"),
            (Elf64, Big, EM_PPC64, "linux/ppc64"),
            (Elf64, Big, EM_S390, "linux/s390x"),
            (Elf32, Big, EM_MIPS, "linux/mips"),
            (Elf64, Little, EM_LOONGARCH, "linux/loong64"),
        ];
        for (class, endian, machine, want) in cases {
            for e_type in [ET_EXEC, ET_DYN] {
                let info = Platform::from_elf(&elf(class, endian, machine, e_type, None)).unwrap();
                assert_eq!(info.platform.to_string(), want);
                assert_eq!(info.class, class);
                assert_eq!(info.endian, endian);
                assert_eq!(info.position_independent, e_type == ET_DYN);
                assert!(info.is_static());
            }
        }
        // The arm variant cannot be told from the header.
        let arm = Platform::from_elf(&elf(Elf32, Little, EM_ARM, ET_EXEC, None)).unwrap();
        assert_eq!(arm.platform.variant(), None);
    }

    #[test]
    fn elf_interpreter() {
        for (class, endian, machine, interp) in [
            (
                ElfClass::Elf64,
                Endian::Little,
                EM_AARCH64,
                "/lib/ld-linux-aarch64.so.1",
            ),
            (
                ElfClass::Elf32,
                Endian::Little,
                EM_ARM,
                "/lib/ld-linux-armhf.so.3",
            ),
            (ElfClass::Elf64, Endian::Big, EM_S390, "/lib/ld64.so.1"),
            (ElfClass::Elf32, Endian::Big, EM_MIPS, "/lib/ld.so.1"),
        ] {
            let bytes = elf(class, endian, machine, ET_DYN, Some(interp));
            let info = Platform::from_elf(&bytes).unwrap();
            assert_eq!(info.interpreter.as_deref(), Some(interp));
            assert!(!info.is_static());
        }
    }

    #[test]
    fn elf_rejections() {
        assert_eq!(Platform::from_elf(b""), Err(PlatformError::NotElf));
        assert_eq!(
            Platform::from_elf(b"#!/bin/sh\n"),
            Err(PlatformError::NotElf)
        );
        assert_eq!(Platform::from_elf(b"\x7fEL"), Err(PlatformError::NotElf));
        assert_eq!(PlatformError::NotElf.to_string(), "not an ELF executable");

        let good = elf(ElfClass::Elf64, Endian::Little, EM_X86_64, ET_EXEC, None);
        let mut bad_class = good.clone();
        bad_class[4] = 3;
        assert!(
            matches!(Platform::from_elf(&bad_class), Err(PlatformError::UnsupportedElf(m)) if m.contains("class 3"))
        );
        let mut bad_data = good.clone();
        bad_data[5] = 0;
        assert!(matches!(
            Platform::from_elf(&bad_data),
            Err(PlatformError::UnsupportedElf(_))
        ));
        for (e_type, words) in [(1u8, "relocatable"), (4, "core dump"), (0, "ELF type 0")] {
            let mut b = good.clone();
            b[16] = e_type;
            let err = Platform::from_elf(&b).unwrap_err();
            assert!(err.to_string().contains(words), "{err}");
        }
        let mut sparc = good.clone();
        sparc[18] = 2;
        let err = Platform::from_elf(&sparc).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported ELF file: machine 2 in a 64-bit ELF file"
        );
        // EM_ARM in a 64-bit file and EM_AARCH64 in a 32-bit file are nonsense.
        let arm64_in_32 = elf(ElfClass::Elf32, Endian::Little, EM_AARCH64, ET_EXEC, None);
        assert!(Platform::from_elf(&arm64_in_32).is_err());
        let mut short_phent = good.clone();
        short_phent[54] = 8;
        assert!(matches!(
            Platform::from_elf(&short_phent),
            Err(PlatformError::UnsupportedElf(m)) if m.contains("program header entries of 8 bytes")
        ));
        let mut xnum = good.clone();
        xnum[56] = 0xff;
        xnum[57] = 0xff;
        assert!(Platform::from_elf(&xnum).is_err());
        // Program headers pointing far away.
        let mut far = good;
        far[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Platform::from_elf(&far).is_err());
        far[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            Platform::from_elf(&far),
            Err(PlatformError::TruncatedElf { what: "the program headers", needed, .. }) if needed == (1 << 40) + 56
        ));
        // An interpreter string beyond the data, or absurdly long.
        let mut interp = elf(
            ElfClass::Elf64,
            Endian::Little,
            EM_AARCH64,
            ET_DYN,
            Some("/lib/ld"),
        );
        let at = 64 + 56;
        interp[at + 8..at + 16].copy_from_slice(&10_000u64.to_le_bytes());
        assert!(matches!(
            Platform::from_elf(&interp),
            Err(PlatformError::TruncatedElf {
                what: "the interpreter path (PT_INTERP)",
                needed: 10_008,
                ..
            })
        ));
        interp[at + 32..at + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Platform::from_elf(&interp).is_err());
    }

    #[test]
    fn elf_truncation_and_garbage_never_panic() {
        let samples = [
            elf(
                ElfClass::Elf64,
                Endian::Little,
                EM_AARCH64,
                ET_DYN,
                Some("/lib/ld-linux-aarch64.so.1"),
            ),
            elf(
                ElfClass::Elf32,
                Endian::Big,
                EM_MIPS,
                ET_EXEC,
                Some("/lib/ld.so.1"),
            ),
            elf(ElfClass::Elf32, Endian::Little, EM_ARM, ET_EXEC, None),
        ];
        for full in &samples {
            assert!(Platform::from_elf(full).is_ok());
            for len in 0..full.len() {
                let err = Platform::from_elf(&full[..len]).unwrap_err();
                if len >= 4 {
                    assert!(
                        matches!(err, PlatformError::TruncatedElf { .. }),
                        "length {len}: {err}"
                    );
                }
            }
        }
        // Random corruption of a valid file: errors or answers, never panics.
        let mut state: u64 = 42;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        for round in 0..20_000 {
            let mut bytes = samples[round % samples.len()].clone();
            for _ in 0..(next() % 6 + 1) {
                let at = next() as usize % bytes.len();
                bytes[at] = next() as u8;
            }
            let _ = Platform::from_elf(&bytes);
            let random: Vec<u8> = (0..next() % 200).map(|_| next() as u8).collect();
            let mut with_magic = b"\x7fELF".to_vec();
            with_magic.extend_from_slice(&random);
            let _ = Platform::from_elf(&with_magic);
        }
    }

    #[test]
    fn real_binaries() {
        // /bin/ls is dynamically linked on every distribution this runs on.
        match std::fs::read("/bin/ls") {
            Ok(bytes) => {
                let info = Platform::from_elf(&bytes).unwrap();
                assert_eq!(info.platform, Platform::host());
                let interp = info.interpreter.unwrap();
                assert!(interp.starts_with('/') && interp.contains("ld"), "{interp}");
            }
            Err(e) => println!("skipping /bin/ls: {e}"),
        }
        // Debian's ldconfig is a static-pie executable.
        match std::fs::read("/sbin/ldconfig") {
            Ok(bytes) => {
                let info = Platform::from_elf(&bytes).unwrap();
                assert_eq!(info.platform, Platform::host());
                assert!(info.is_static(), "{:?}", info.interpreter);
            }
            Err(e) => println!("skipping /sbin/ldconfig: {e}"),
        }
        // The test binary itself.
        if let Ok(bytes) = std::env::current_exe().and_then(std::fs::read) {
            let info = Platform::from_elf(&bytes).unwrap();
            assert_eq!(
                info.platform.architecture(),
                Platform::host().architecture()
            );
        }
    }
}
