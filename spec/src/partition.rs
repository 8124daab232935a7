//! The disk layout every ingot image follows (UAPI Discoverable Partitions Specification, x86-64).

use uuid::{Uuid, uuid};

/// EFI System Partition.
pub const TYPE_ESP: Uuid = uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
/// Root file system for x86-64 (`SD_GPT_ROOT_X86_64`).
pub const TYPE_ROOT_X86_64: Uuid = uuid!("4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
/// dm-verity hash tree of an x86-64 root (`SD_GPT_ROOT_X86_64_VERITY`).
pub const TYPE_ROOT_X86_64_VERITY: Uuid = uuid!("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5");
/// Variable data (`SD_GPT_VAR`), formatted on first boot.
pub const TYPE_VAR: Uuid = uuid!("4d21b016-b534-45c2-a9fb-5c16e091fd2d");

/// GPT attribute bit 60: the partition is read-only (UAPI spec).
pub const ATTR_READ_ONLY: u64 = 1 << 60;
/// GPT attribute bit 63: do not mount automatically (used for the inactive slot).
pub const ATTR_NO_AUTO: u64 = 1 << 63;
/// GPT attribute bit 59: grow the file system to the partition size on first mount.
pub const ATTR_GROW_FS: u64 = 1 << 59;

/// What a partition of an ingot image is for. The order of the variants is the order on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Esp,
    RootA,
    RootAVerity,
    RootB,
    RootBVerity,
    Var,
}

impl Role {
    /// All roles in on-disk order (partition numbers 1..=6).
    pub const ALL: [Role; 6] = [
        Role::Esp,
        Role::RootA,
        Role::RootAVerity,
        Role::RootB,
        Role::RootBVerity,
        Role::Var,
    ];

    /// The GPT partition name (also the label tools show).
    pub const fn label(self) -> &'static str {
        match self {
            Role::Esp => "esp",
            Role::RootA => "root-a",
            Role::RootAVerity => "root-a-verity",
            Role::RootB => "root-b",
            Role::RootBVerity => "root-b-verity",
            Role::Var => "var",
        }
    }

    /// The UAPI partition type GUID.
    pub const fn type_guid(self) -> Uuid {
        match self {
            Role::Esp => TYPE_ESP,
            Role::RootA | Role::RootB => TYPE_ROOT_X86_64,
            Role::RootAVerity | Role::RootBVerity => TYPE_ROOT_X86_64_VERITY,
            Role::Var => TYPE_VAR,
        }
    }

    /// GPT attribute bits the builder sets.
    pub const fn attributes(self) -> u64 {
        match self {
            Role::Esp => 0,
            Role::RootA | Role::RootAVerity => ATTR_READ_ONLY,
            Role::RootB | Role::RootBVerity => ATTR_READ_ONLY | ATTR_NO_AUTO,
            Role::Var => ATTR_GROW_FS,
        }
    }

    /// The 1-based partition number this role has in every ingot image.
    pub const fn number(self) -> u32 {
        match self {
            Role::Esp => 1,
            Role::RootA => 2,
            Role::RootAVerity => 3,
            Role::RootB => 4,
            Role::RootBVerity => 5,
            Role::Var => 6,
        }
    }

    /// Looks a role up by its GPT partition name.
    pub fn from_label(label: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.label() == label)
    }
}

/// The file system written to `root-a`.
pub const ROOT_FS_TYPE: &str = "erofs";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_numbers_follow_disk_order() {
        for (i, role) in Role::ALL.into_iter().enumerate() {
            assert_eq!(Role::from_label(role.label()), Some(role));
            assert_eq!(role.number() as usize, i + 1);
        }
    }
}
