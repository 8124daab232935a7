//! Unified kernel images (UKI): systemd-stub plus kernel, initrd, command line and os-release in one PE file.
//!
//! Layout follows the UAPI "Unified Kernel Image" specification. [`assemble`] takes the bytes of systemd-stub
//! (`linuxx64.efi.stub` from Debian's `systemd-boot-efi`) and appends these sections, in this order:
//! `.osrel`, `.cmdline`, `.uname` (optional), `.initrd`, `.linux`. `.linux` comes last, as `ukify` does, so
//! the kernel may use the address space behind it. Empty payloads (an empty command line, no initrd) get no
//! section.
//!
//! - Virtual addresses start at the first 4 KiB boundary behind everything the stub maps and each section starts on
//!   a 4 KiB boundary (or the stub's `SectionAlignment` if larger).
//! - Raw data is laid out at the stub's `FileAlignment`, padded with zeros.
//! - `NumberOfSections`, `SizeOfImage` and `SizeOfInitializedData` are updated; `CheckSum` is zeroed (UEFI does
//!   not check it, and signing tools recompute it).
//! - A COFF symbol table at the end of the stub (systemd 252 ships one, deprecated for images) is dropped, so no
//!   bytes sit between sections' raw data and an Authenticode hash later covers the whole file.
//! - The output is a pure function of the inputs: no timestamps, no randomness.
//!
//! Refused, with an error: a signed stub (non-empty security directory; adding sections would break the
//! signature — sign the assembled UKI instead), a stub without room for the new section headers before its first
//! section's data, a stub that already carries one of the sections we add.
//!
//! The reader ([`read_sections`], [`cmdline`], [`os_release`], [`uname`]) parses untrusted bytes: every offset is
//! bounds-checked and every failure is an [`UkiError`] naming the byte offset; it never panics (property-tested).
//!
//! Limits: PE32 and PE32+ images are read; long section names (`/<n>` string-table references) are reported as
//! they are stored. No signing here: that happens on the assembled file.
//!
//! Hand-written rather than with a PE crate: the writer has to patch a handful of header fields in place and
//! the reader is a few bounds checks, less code than adapting a general object-file API to both.

use std::ops::Range;

use thiserror::Error;

/// What goes into a unified kernel image.
#[derive(Debug, Clone, Copy)]
pub struct UkiInputs<'a> {
    /// systemd-stub, unsigned (`linuxx64.efi.stub`).
    pub stub: &'a [u8],
    /// The kernel image (bzImage with EFI stub, e.g. `vmlinuz-6.1.0-56-cloud-amd64`).
    pub kernel: &'a [u8],
    /// The initramfs (e.g. a zstd-compressed cpio from [`crate::initramfs`]).
    pub initrd: &'a [u8],
    /// The kernel command line, stored without a trailing NUL.
    pub cmdline: &'a str,
    /// The contents of `os-release`, stored in `.osrel`.
    pub os_release: &'a str,
    /// The kernel release (`uname -r`), stored in `.uname` when given.
    pub uname: Option<&'a str>,
}

/// One section of a PE image, as found by [`read_sections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name with trailing NULs removed (lossy UTF-8).
    pub name: String,
    /// The section's relative virtual address.
    pub virtual_address: u32,
    /// The section's size in memory.
    pub virtual_size: u32,
    /// Where the section's data lies in the file: `min(VirtualSize, SizeOfRawData)` bytes from
    /// `PointerToRawData` (all of `SizeOfRawData` when `VirtualSize` is 0).
    pub data: Range<usize>,
}

/// Errors from assembling or reading a UKI.
#[derive(Debug, Error)]
pub enum UkiError {
    /// The file ends before a structure that must be there.
    #[error("PE image truncated: expected {what} at byte offset {offset:#x}, but the file has {len} bytes")]
    Truncated {
        what: &'static str,
        offset: usize,
        len: usize,
    },
    /// No DOS header.
    #[error("not a PE image: expected \"MZ\" at byte offset 0")]
    NoDosMagic,
    /// No PE signature where the DOS header points.
    #[error("not a PE image: expected \"PE\\0\\0\" at byte offset {offset:#x}")]
    NoPeSignature { offset: usize },
    /// Neither PE32 nor PE32+.
    #[error(
        "unsupported optional header magic {magic:#06x} at byte offset {offset:#x}: expected 0x10b (PE32) or 0x20b (PE32+)"
    )]
    UnsupportedOptionalHeader { magic: u16, offset: usize },
    /// The optional header is shorter than its fixed fields or data directory list.
    #[error(
        "optional header at byte offset {offset:#x} is {size} bytes, too small for its {needed} bytes of fields"
    )]
    OptionalHeaderTooSmall {
        offset: usize,
        size: usize,
        needed: usize,
    },
    /// An alignment field is not a power of two in the range the PE format allows.
    #[error("invalid {field} {value:#x}: expected a power of two between 0x200 and 0x10000")]
    BadAlignment { field: &'static str, value: u32 },
    /// A section's raw data lies outside the file.
    #[error(
        "section {index} ({name}) claims raw data at byte offset {offset:#x}, {size:#x} bytes, beyond the end of the {len}-byte file"
    )]
    SectionOutOfBounds {
        index: usize,
        name: String,
        offset: u64,
        size: u64,
        len: usize,
    },
    /// The stub carries an Authenticode signature.
    #[error(
        "the stub is signed (security directory at byte offset {offset:#x}, {size} bytes): adding sections would break \
         its signature; use the unsigned stub and sign the assembled UKI"
    )]
    SignedStub { offset: u32, size: u32 },
    /// The stub has no room for more section headers.
    #[error(
        "the stub has no room for {needed} more section headers: they would end at byte offset {end:#x}, but section \
         data or SizeOfHeaders starts at {limit:#x}"
    )]
    NoHeaderRoom { needed: usize, end: usize, limit: usize },
    /// The stub already carries a section we would add.
    #[error("the stub already has a {name} section (section {index}): expected a bare systemd-stub")]
    DuplicateSection { name: &'static str, index: usize },
    /// The result would not fit the 32-bit fields of a PE image.
    #[error("the UKI would be larger than 4 GiB while adding section {name} ({len} bytes)")]
    TooLarge { name: &'static str, len: usize },
    /// No kernel bytes were given.
    #[error("the kernel image is empty: expected a bzImage for the .linux section")]
    EmptyKernel,
    /// A text section is not UTF-8.
    #[error("section {name} is not valid UTF-8 (byte offset {offset:#x} in the file)")]
    NotUtf8 { name: &'static str, offset: usize },
}

/// Section flags for the added sections: initialized data, readable (what `ukify` uses).
const SECTION_FLAGS: u32 = 0x0000_0040 | 0x4000_0000;
/// Virtual addresses of the added sections are aligned to at least this.
const VA_ALIGN: u64 = 4096;
const SECTION_HEADER_LEN: usize = 40;
/// Index of the security (certificate table) data directory.
const SECURITY_DIRECTORY: usize = 4;

/// The parsed fixed headers: absolute file offsets of the fields we touch, and their values.
#[derive(Debug)]
struct Headers {
    coff: usize,
    optional: usize,
    number_of_sections: usize,
    pointer_to_symbol_table: u32,
    section_table: usize,
    section_alignment: u32,
    file_alignment: u32,
    size_of_image: u32,
    size_of_headers: u32,
    /// (offset of the security directory entry, its RVA/offset, its size), when the image has one.
    security: Option<(usize, u32, u32)>,
}

/// The raw fields of one section header.
#[derive(Debug)]
struct RawSection {
    name: [u8; 8],
    virtual_size: u32,
    virtual_address: u32,
    size_of_raw_data: u32,
    pointer_to_raw_data: u32,
}

fn read_u16(bytes: &[u8], offset: usize, what: &'static str) -> Result<u16, UkiError> {
    bytes
        .get(offset..offset.saturating_add(2))
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(UkiError::Truncated {
            what,
            offset,
            len: bytes.len(),
        })
}

fn read_u32(bytes: &[u8], offset: usize, what: &'static str) -> Result<u32, UkiError> {
    bytes
        .get(offset..offset.saturating_add(4))
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(UkiError::Truncated {
            what,
            offset,
            len: bytes.len(),
        })
}

fn put_u16(bytes: &mut [u8], offset: usize, value: u16) {
    bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn check_alignment(field: &'static str, value: u32) -> Result<(), UkiError> {
    if value.is_power_of_two() && (0x200..=0x1_0000).contains(&value) {
        Ok(())
    } else {
        Err(UkiError::BadAlignment { field, value })
    }
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

fn parse_headers(bytes: &[u8]) -> Result<Headers, UkiError> {
    if bytes.get(0..2) != Some(b"MZ") {
        return Err(UkiError::NoDosMagic);
    }
    let pe = read_u32(bytes, 0x3c, "e_lfanew (PE header offset)")? as usize;
    if bytes.get(pe..pe.saturating_add(4)) != Some(b"PE\0\0") {
        return Err(UkiError::NoPeSignature { offset: pe });
    }
    let coff = pe + 4;
    let number_of_sections = read_u16(bytes, coff + 2, "COFF NumberOfSections")? as usize;
    let pointer_to_symbol_table = read_u32(bytes, coff + 8, "COFF PointerToSymbolTable")?;
    let optional_size = read_u16(bytes, coff + 16, "COFF SizeOfOptionalHeader")? as usize;
    let optional = coff + 20;
    let magic = read_u16(bytes, optional, "optional header magic")?;
    let (dirs_count_at, dirs_at) = match magic {
        0x10b => (92, 96),
        0x20b => (108, 112),
        _ => {
            return Err(UkiError::UnsupportedOptionalHeader {
                magic,
                offset: optional,
            });
        }
    };
    if optional_size < dirs_at {
        return Err(UkiError::OptionalHeaderTooSmall {
            offset: optional,
            size: optional_size,
            needed: dirs_at,
        });
    }
    let section_table = optional + optional_size;
    let section_alignment = read_u32(bytes, optional + 32, "SectionAlignment")?;
    let file_alignment = read_u32(bytes, optional + 36, "FileAlignment")?;
    let size_of_image = read_u32(bytes, optional + 56, "SizeOfImage")?;
    let size_of_headers = read_u32(bytes, optional + 60, "SizeOfHeaders")?;
    let dirs_count = read_u32(bytes, optional + dirs_count_at, "NumberOfRvaAndSizes")? as usize;
    let security = if dirs_count > SECURITY_DIRECTORY {
        let needed = dirs_at + (SECURITY_DIRECTORY + 1) * 8;
        if optional_size < needed {
            return Err(UkiError::OptionalHeaderTooSmall {
                offset: optional,
                size: optional_size,
                needed,
            });
        }
        let at = optional + dirs_at + SECURITY_DIRECTORY * 8;
        let address = read_u32(bytes, at, "security directory")?;
        let size = read_u32(bytes, at + 4, "security directory")?;
        Some((at, address, size))
    } else {
        None
    };
    let table_end = section_table.saturating_add(number_of_sections * SECTION_HEADER_LEN);
    if table_end > bytes.len() {
        return Err(UkiError::Truncated {
            what: "section table",
            offset: section_table,
            len: bytes.len(),
        });
    }
    Ok(Headers {
        coff,
        optional,
        number_of_sections,
        pointer_to_symbol_table,
        section_table,
        section_alignment,
        file_alignment,
        size_of_image,
        size_of_headers,
        security,
    })
}

fn raw_sections(bytes: &[u8], headers: &Headers) -> Result<Vec<RawSection>, UkiError> {
    (0..headers.number_of_sections)
        .map(|i| {
            let at = headers.section_table + i * SECTION_HEADER_LEN;
            let mut name = [0u8; 8];
            name.copy_from_slice(bytes.get(at..at + 8).ok_or(UkiError::Truncated {
                what: "section name",
                offset: at,
                len: bytes.len(),
            })?);
            Ok(RawSection {
                name,
                virtual_size: read_u32(bytes, at + 8, "section VirtualSize")?,
                virtual_address: read_u32(bytes, at + 12, "section VirtualAddress")?,
                size_of_raw_data: read_u32(bytes, at + 16, "section SizeOfRawData")?,
                pointer_to_raw_data: read_u32(bytes, at + 20, "section PointerToRawData")?,
            })
        })
        .collect()
}

fn section_name(raw: &[u8; 8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Lists the sections of a PE image, with bounds-checked data ranges.
pub fn read_sections(bytes: &[u8]) -> Result<Vec<Section>, UkiError> {
    let headers = parse_headers(bytes)?;
    raw_sections(bytes, &headers)?
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let name = section_name(&raw.name);
            let size = if raw.virtual_size == 0 {
                raw.size_of_raw_data
            } else {
                raw.virtual_size.min(raw.size_of_raw_data)
            };
            let start = u64::from(raw.pointer_to_raw_data);
            let end = start + u64::from(size);
            if size != 0 && end > bytes.len() as u64 {
                return Err(UkiError::SectionOutOfBounds {
                    index,
                    name,
                    offset: start,
                    size: u64::from(size),
                    len: bytes.len(),
                });
            }
            let data = if size == 0 {
                0..0
            } else {
                start as usize..end as usize
            };
            Ok(Section {
                name,
                virtual_address: raw.virtual_address,
                virtual_size: raw.virtual_size,
                data,
            })
        })
        .collect()
}

/// The data of the first section called `name`, if there is one.
pub fn section_data<'a>(bytes: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, UkiError> {
    Ok(read_sections(bytes)?
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| &bytes[s.data]))
}

fn section_text(bytes: &[u8], name: &'static str) -> Result<Option<String>, UkiError> {
    let Some(section) = read_sections(bytes)?.into_iter().find(|s| s.name == name) else {
        return Ok(None);
    };
    let start = section.data.start;
    let data = &bytes[section.data];
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    match std::str::from_utf8(&data[..end]) {
        Ok(text) => Ok(Some(text.to_owned())),
        Err(e) => Err(UkiError::NotUtf8 {
            name,
            offset: start + e.valid_up_to(),
        }),
    }
}

/// The kernel command line stored in `.cmdline`, trailing NULs removed.
pub fn cmdline(bytes: &[u8]) -> Result<Option<String>, UkiError> {
    section_text(bytes, ".cmdline")
}

/// The os-release text stored in `.osrel`, trailing NULs removed.
pub fn os_release(bytes: &[u8]) -> Result<Option<String>, UkiError> {
    section_text(bytes, ".osrel")
}

/// The kernel release stored in `.uname`, trailing NULs removed.
pub fn uname(bytes: &[u8]) -> Result<Option<String>, UkiError> {
    section_text(bytes, ".uname")
}

/// Assembles a UKI from systemd-stub and its payloads. See the module documentation for the layout.
pub fn assemble(inputs: &UkiInputs<'_>) -> Result<Vec<u8>, UkiError> {
    let stub = inputs.stub;
    let headers = parse_headers(stub)?;
    if let Some((_, offset, size)) = headers.security
        && size != 0
    {
        return Err(UkiError::SignedStub { offset, size });
    }
    check_alignment("FileAlignment", headers.file_alignment)?;
    check_alignment("SectionAlignment", headers.section_alignment)?;
    let existing = raw_sections(stub, &headers)?;

    let mut added: Vec<(&'static str, &[u8])> = vec![
        (".osrel", inputs.os_release.as_bytes()),
        (".cmdline", inputs.cmdline.as_bytes()),
    ];
    if let Some(uname) = inputs.uname {
        added.push((".uname", uname.as_bytes()));
    }
    added.push((".initrd", inputs.initrd));
    // Empty payloads get no section (as with ukify); a UKI without a kernel is a mistake.
    added.retain(|(_, data)| !data.is_empty());
    if inputs.kernel.is_empty() {
        return Err(UkiError::EmptyKernel);
    }
    added.push((".linux", inputs.kernel));

    for (index, raw) in existing.iter().enumerate() {
        let name = section_name(&raw.name);
        if let Some((new, _)) = added.iter().find(|(n, _)| *n == name) {
            return Err(UkiError::DuplicateSection { name: new, index });
        }
    }

    let mut raw_end = 0u64;
    let mut mapped_end = u64::from(headers.size_of_image);
    for (index, raw) in existing.iter().enumerate() {
        let start = u64::from(raw.pointer_to_raw_data);
        let end = start + u64::from(raw.size_of_raw_data);
        if raw.size_of_raw_data != 0 && end > stub.len() as u64 {
            return Err(UkiError::SectionOutOfBounds {
                index,
                name: section_name(&raw.name),
                offset: start,
                size: u64::from(raw.size_of_raw_data),
                len: stub.len(),
            });
        }
        raw_end = raw_end.max(end);
        let size = raw.virtual_size.max(raw.size_of_raw_data);
        mapped_end = mapped_end.max(u64::from(raw.virtual_address) + u64::from(size));
    }

    // Drop a trailing COFF symbol table (and its string table) unless a long section name refers to it.
    let symbols = u64::from(headers.pointer_to_symbol_table);
    let long_names = existing.iter().any(|s| s.name[0] == b'/');
    let keep = if symbols != 0 && symbols >= raw_end && symbols <= stub.len() as u64 && !long_names {
        symbols as usize
    } else {
        stub.len()
    };

    // Room for the new section headers: before SizeOfHeaders, any section's raw data
    // and the end of what we keep of the stub.
    let table_end = headers.section_table + (existing.len() + added.len()) * SECTION_HEADER_LEN;
    let first_data = existing
        .iter()
        .filter(|s| s.size_of_raw_data != 0 && s.pointer_to_raw_data != 0)
        .map(|s| s.pointer_to_raw_data as usize)
        .min()
        .unwrap_or(usize::MAX);
    let limit = first_data.min(headers.size_of_headers as usize).min(keep);
    if table_end > limit {
        return Err(UkiError::NoHeaderRoom {
            needed: added.len(),
            end: table_end,
            limit,
        });
    }

    let file_align = u64::from(headers.file_alignment);
    let va_align = VA_ALIGN.max(u64::from(headers.section_alignment));
    let mut out = stub[..keep].to_vec();
    let mut raw_at = align_up(keep as u64, file_align);
    let mut va = align_up(mapped_end, va_align);
    let mut initialized = 0u64;
    let mut new_headers = Vec::with_capacity(added.len() * SECTION_HEADER_LEN);
    let mut payload = Vec::with_capacity(added.len());
    for (name, data) in &added {
        let len = data.len() as u64;
        let raw_size = align_up(len, file_align);
        let too_large = UkiError::TooLarge {
            name,
            len: data.len(),
        };
        let fits = |v: u64| u32::try_from(v).ok();
        let (Some(vs), Some(va32), Some(rs), Some(ptr), Some(_)) =
            (fits(len), fits(va), fits(raw_size), fits(raw_at), fits(va + len))
        else {
            return Err(too_large);
        };
        let mut header = [0u8; SECTION_HEADER_LEN];
        header[..name.len()].copy_from_slice(name.as_bytes());
        put_u32(&mut header, 8, vs);
        put_u32(&mut header, 12, va32);
        put_u32(&mut header, 16, rs);
        put_u32(&mut header, 20, ptr);
        put_u32(&mut header, 36, SECTION_FLAGS);
        new_headers.extend_from_slice(&header);
        payload.push((raw_at, *data, raw_size));
        initialized += raw_size;
        raw_at += raw_size;
        va = align_up(va + len, va_align);
    }
    let size_of_image = u32::try_from(va).map_err(|_| UkiError::TooLarge {
        name: ".linux",
        len: inputs.kernel.len(),
    })?;
    let old_initialized = u64::from(read_u32(stub, headers.optional + 8, "SizeOfInitializedData")?);
    let size_of_initialized =
        u32::try_from(old_initialized + initialized).map_err(|_| UkiError::TooLarge {
            name: ".linux",
            len: inputs.kernel.len(),
        })?;

    let table_at = headers.section_table + existing.len() * SECTION_HEADER_LEN;
    out[table_at..table_at + new_headers.len()].copy_from_slice(&new_headers);
    let count = u16::try_from(existing.len() + added.len()).map_err(|_| UkiError::NoHeaderRoom {
        needed: added.len(),
        end: table_end,
        limit,
    })?;
    put_u16(&mut out, headers.coff + 2, count);
    if keep != stub.len() {
        put_u32(&mut out, headers.coff + 8, 0);
        put_u32(&mut out, headers.coff + 12, 0);
    }
    put_u32(&mut out, headers.optional + 8, size_of_initialized);
    put_u32(&mut out, headers.optional + 56, size_of_image);
    put_u32(&mut out, headers.optional + 64, 0);

    out.reserve((raw_at as usize).saturating_sub(out.len()));
    for (at, data, raw_size) in payload {
        out.resize(at as usize, 0);
        out.extend_from_slice(data);
        out.resize((at + raw_size) as usize, 0);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal PE32+ EFI application: headers (0x400 bytes), `.text` and `.sbat` sections, a symbol table.
    pub(crate) fn tiny_stub() -> Vec<u8> {
        let mut b = vec![0u8; 0x800];
        b[0..2].copy_from_slice(b"MZ");
        put_u32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put_u16(&mut b, coff, 0x8664);
        put_u16(&mut b, coff + 2, 2);
        put_u32(&mut b, coff + 8, 0x800); // symbol table right after the last section
        put_u32(&mut b, coff + 12, 1);
        put_u16(&mut b, coff + 16, 0xf0);
        put_u16(&mut b, coff + 18, 0x206);
        let opt = coff + 20;
        put_u16(&mut b, opt, 0x20b);
        put_u32(&mut b, opt + 4, 0x200); // SizeOfCode
        put_u32(&mut b, opt + 8, 0x200); // SizeOfInitializedData
        put_u32(&mut b, opt + 16, 0x1000); // AddressOfEntryPoint
        put_u32(&mut b, opt + 32, 0x200); // SectionAlignment
        put_u32(&mut b, opt + 36, 0x200); // FileAlignment
        put_u32(&mut b, opt + 56, 0x2200); // SizeOfImage
        put_u32(&mut b, opt + 60, 0x400); // SizeOfHeaders
        put_u32(&mut b, opt + 64, 0x1234); // CheckSum
        put_u16(&mut b, opt + 68, 10); // EFI application
        put_u32(&mut b, opt + 108, 16);
        let table = opt + 0xf0;
        let mut section = |i: usize, name: &[u8], vs: u32, va: u32, rs: u32, ptr: u32, flags: u32| {
            let at = table + i * SECTION_HEADER_LEN;
            b[at..at + name.len()].copy_from_slice(name);
            put_u32(&mut b, at + 8, vs);
            put_u32(&mut b, at + 12, va);
            put_u32(&mut b, at + 16, rs);
            put_u32(&mut b, at + 20, ptr);
            put_u32(&mut b, at + 36, flags);
        };
        section(0, b".text", 0x10, 0x1000, 0x200, 0x400, 0x6000_0020);
        section(1, b".sbat", 0x20, 0x2000, 0x200, 0x600, SECTION_FLAGS);
        b[0x400..0x410].copy_from_slice(&[0xc3; 16]);
        let sbat = b"sbat,1,SBAT Version,sbat,1,url\n";
        b[0x600..0x600 + sbat.len()].copy_from_slice(sbat);
        b.extend_from_slice(&[0x55; 22]); // 18-byte symbol + 4-byte string table size
        b
    }

    pub(crate) fn inputs<'a>(stub: &'a [u8]) -> UkiInputs<'a> {
        UkiInputs {
            stub,
            kernel: b"MZ-kernel-bytes",
            initrd: &[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3],
            cmdline: "console=ttyS0 ro",
            os_release: "ID=ingot\nVERSION_ID=1\n",
            uname: Some("6.1.0-56-cloud-amd64"),
        }
    }

    #[test]
    fn assembles_sections_in_order_with_aligned_addresses() {
        let stub = tiny_stub();
        let uki = assemble(&inputs(&stub)).unwrap();
        let sections = read_sections(&uki).unwrap();
        let names: Vec<_> = sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                ".text", ".sbat", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"
            ]
        );
        for s in &sections[2..] {
            assert_eq!(s.virtual_address % 4096, 0, "{}", s.name);
            assert_eq!(s.data.start % 0x200, 0, "{}", s.name);
        }
        assert_eq!(sections[2].virtual_address, 0x3000);
        assert_eq!(&uki[sections[6].data.clone()], b"MZ-kernel-bytes");
        assert_eq!(cmdline(&uki).unwrap().as_deref(), Some("console=ttyS0 ro"));
        assert_eq!(
            os_release(&uki).unwrap().as_deref(),
            Some("ID=ingot\nVERSION_ID=1\n")
        );
        assert_eq!(uname(&uki).unwrap().as_deref(), Some("6.1.0-56-cloud-amd64"));
        let headers = parse_headers(&uki).unwrap();
        assert_eq!(headers.size_of_image, 0x8000);
        assert_eq!(headers.pointer_to_symbol_table, 0, "symbol table dropped");
        assert_eq!(read_u32(&uki, headers.optional + 64, "").unwrap(), 0);
        assert_eq!(
            read_u32(&uki, headers.optional + 8, "").unwrap(),
            0x200 + 5 * 0x200
        );
        assert_eq!(
            uki.len(),
            0x800 + 5 * 0x200,
            "raw data follows the stub's sections"
        );
    }

    #[test]
    fn without_uname_there_is_no_uname_section() {
        let stub = tiny_stub();
        let uki = assemble(&UkiInputs {
            uname: None,
            ..inputs(&stub)
        })
        .unwrap();
        assert_eq!(uname(&uki).unwrap(), None);
        assert_eq!(read_sections(&uki).unwrap().len(), 6);
    }

    #[test]
    fn empty_payloads_get_no_section_but_the_kernel_is_required() {
        let stub = tiny_stub();
        let uki = assemble(&UkiInputs {
            initrd: b"",
            cmdline: "",
            ..inputs(&stub)
        })
        .unwrap();
        let names: Vec<_> = read_sections(&uki).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, [".text", ".sbat", ".osrel", ".uname", ".linux"]);
        assert_eq!(cmdline(&uki).unwrap(), None);
        let err = assemble(&UkiInputs {
            kernel: b"",
            ..inputs(&stub)
        })
        .unwrap_err();
        assert!(matches!(err, UkiError::EmptyKernel), "{err}");
    }

    #[test]
    fn output_is_deterministic() {
        let stub = tiny_stub();
        assert_eq!(
            assemble(&inputs(&stub)).unwrap(),
            assemble(&inputs(&stub)).unwrap()
        );
    }

    #[test]
    fn refuses_a_signed_stub() {
        let mut stub = tiny_stub();
        let opt = 0x84 + 20;
        put_u32(&mut stub, opt + 112 + 4 * 8, 0x800);
        put_u32(&mut stub, opt + 112 + 4 * 8 + 4, 0x100);
        let err = assemble(&inputs(&stub)).unwrap_err();
        assert!(matches!(err, UkiError::SignedStub { size: 0x100, .. }), "{err}");
    }

    #[test]
    fn refuses_a_stub_without_header_room() {
        let mut stub = tiny_stub();
        // Claim the first section's data starts right after the existing section table.
        let table = 0x84 + 20 + 0xf0;
        put_u32(&mut stub, table + 20, (table + 2 * 40 + 40) as u32);
        let err = assemble(&inputs(&stub)).unwrap_err();
        assert!(matches!(err, UkiError::NoHeaderRoom { needed: 5, .. }), "{err}");
        assert!(err.to_string().contains("no room for 5 more section headers"));
    }

    #[test]
    fn refuses_a_stub_that_already_has_a_payload() {
        let stub = tiny_stub();
        let uki = assemble(&inputs(&stub)).unwrap();
        let err = assemble(&inputs(&uki)).unwrap_err();
        assert!(
            matches!(err, UkiError::DuplicateSection { name: ".osrel", .. }),
            "{err}"
        );
    }

    #[test]
    fn reports_truncation_with_offset() {
        let stub = tiny_stub();
        let err = read_sections(&stub[..0x180]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PE image truncated: expected section table at byte offset 0x188, but the file has 384 bytes"
        );
        assert!(matches!(read_sections(b"MZ"), Err(UkiError::Truncated { .. })));
        assert!(matches!(read_sections(b"ELF"), Err(UkiError::NoDosMagic)));
    }

    /// One line per section: name, virtual address, virtual size, file range.
    pub(crate) fn listing(uki: &[u8]) -> String {
        read_sections(uki)
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{:<9} va={:#07x} vsize={:#07x} file={:#07x}..{:#07x}\n",
                    s.name, s.virtual_address, s.virtual_size, s.data.start, s.data.end
                )
            })
            .collect()
    }

    /// The systemd-stub every image uses: the minimal profile's pinned `systemd-boot-efi`, fetched and
    /// unpacked as a build does.
    fn pinned_stub() -> Vec<u8> {
        let lock = crate::lock::Lock::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/minimal.lock"),
        )
        .unwrap();
        let dir = crate::fetch::Fetcher::from_env(false)
            .unwrap()
            .unpacked(&lock.pinned("bootloader").unwrap())
            .unwrap();
        std::fs::read(dir.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub")).unwrap()
    }

    #[test]
    fn debian_stub_layout_matches_golden_file() {
        let stub = pinned_stub();
        assert!(
            stub.windows(16).any(|w| w == b"systemd-stub 252"),
            "the golden file is for Debian 12's systemd-stub 252"
        );
        let uki = assemble(&inputs(&stub)).unwrap();
        assert_eq!(
            listing(&uki),
            include_str!("../tests/data/uki-sections.txt"),
            "update tests/data/uki-sections.txt if the layout change is intended"
        );
        assert_eq!(cmdline(&uki).unwrap().as_deref(), Some("console=ttyS0 ro"));
        // The stub's own sections are untouched.
        let stub_sections = read_sections(&stub).unwrap();
        for s in &stub_sections {
            assert_eq!(stub[s.data.clone()], uki[s.data.clone()], "{}", s.name);
        }
        assert_eq!(uki, assemble(&inputs(&stub)).unwrap());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = read_sections(&bytes);
            let _ = cmdline(&bytes);
            let _ = assemble(&inputs(&bytes));
        }

        #[test]
        fn mutated_images_never_panic(edits in proptest::collection::vec((0usize..0x1000, any::<u8>()), 1..16)) {
            let stub = tiny_stub();
            let mut uki = assemble(&inputs(&stub)).unwrap();
            for (at, value) in edits {
                let at = at % uki.len();
                uki[at] = value;
            }
            if let Ok(sections) = read_sections(&uki) {
                for s in sections {
                    prop_assert!(s.data.end <= uki.len());
                }
            }
            let _ = os_release(&uki);
            let _ = assemble(&inputs(&uki));
            let _ = assemble(&inputs(&uki[..uki.len() / 2]));
        }
    }
}
