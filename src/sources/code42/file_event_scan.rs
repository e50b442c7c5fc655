//! [`FileEventView`] read by the JSON scanner (`json_scan`) instead of serde's visitors: the same
//! view, at a fraction of the instructions, for every record a syslog sink maps to CEF.
//!
//! Owns: [`FileEventView::scan`] and the readers of the view's parts. Must not: read a record
//! differently from the serde path (`file_event_view.rs`), which stays the reference and takes
//! every record this one declines. Invariant: `scan` either answers exactly the view the serde
//! path gives, or `None`: for a key given twice where serde refuses it, and for everything the
//! scanner leaves to the general path (invalid JSON, `\u` escapes in values it reads, numbers it
//! reads that are not plain unsigned integers, deep nesting). The differential tests below hold
//! it to that over the fixtures, the simulator's records and thousands of mutations of them.

use super::file_event_view::{
    FieldValue, FileEventView, Nested, ObjectList, SourceField, V2Destination, V2Email, V2Event,
    V2File, V2Hash, V2Indicator, V2Media, V2Process, V2Risk, V2Source, V2Tab, V2User,
};
use crate::sources::json_scan::{JsonScan, KeysSeen, Literal};

/// Reads an object into a default `$ty`, each known key (numbered for [`KeysSeen`]) by its reader;
/// a known key given twice answers `None`, as a derived struct refuses it. Unknown keys are
/// skipped. The numbers must run 0, 1, 2, … in order (checked when compiling): a number given
/// twice would decline good records, one past 63 every record.
macro_rules! read_object {
    ($scan:expr, $ty:ty { $($bit:literal $key:literal => $field:ident : $read:expr,)* }) => {{
        const _: () = {
            let bits: &[u32] = &[$($bit),*];
            let mut i = 0;
            while i < bits.len() {
                assert!(bits[i] as usize == i && i < 64, "keys are numbered 0, 1, 2, … below 64");
                i += 1;
            }
        };
        let mut out = <$ty>::default();
        let mut seen = KeysSeen::default();
        $scan.object(|scan, key| match key {
            $($key => {
                seen.first($bit)?;
                out.$field = $read(scan)?;
                Some(())
            })*
            _ => scan.skip(),
        })?;
        Some(out)
    }};
}

impl<'a> FileEventView<'a> {
    /// The view of a record's JSON text, or `None` when the serde path must decide (see the
    /// module's invariant).
    pub(super) fn scan(text: &'a str) -> Option<Self> {
        let mut scan = JsonScan::new(text);
        if scan.peek()? != b'{' {
            return None;
        }
        let view = read_object!(scan, FileEventView<'a> {
            0 "@timestamp" => timestamp: field,
            1 "event" => event: nested(event),
            2 "user" => user: nested(user),
            3 "source" => source: source,
            4 "destination" => destination: nested(destination),
            5 "file" => file: nested(file),
            6 "process" => process: nested(process),
            7 "risk" => risk: nested(risk),
            8 "eventType" => event_type: field,
            9 "eventId" => event_id: field,
            10 "eventTimestamp" => event_timestamp: field,
            11 "insertionTimestamp" => insertion_timestamp: field,
            12 "createTimestamp" => create_timestamp: field,
            13 "modifyTimestamp" => modify_timestamp: field,
            14 "deviceUid" => device_uid: field,
            15 "actor" => actor: field,
            16 "deviceUserName" => device_user_name: field,
            17 "emailSender" => email_sender: field,
            18 "sharedWith" => shared_with: field,
            19 "emailRecipients" => email_recipients: field,
            20 "userUid" => user_uid: field,
            21 "osHostName" => os_host_name: field,
            22 "domainName" => domain_name: field,
            23 "publicIpAddress" => public_ip_address: field,
            24 "fileName" => file_name: field,
            25 "filePath" => file_path: field,
            26 "url" => url: field,
            27 "fileSize" => file_size: field,
            28 "fileCategory" => file_category: field,
            29 "md5Checksum" => md5_checksum: field,
            30 "processName" => process_name: field,
            31 "processOwner" => process_owner: field,
            32 "syncDestination" => sync_destination: field,
            33 "tabUrl" => tab_url: field,
            34 "tabUrls" => tab_urls: field,
            35 "windowTitle" => window_title: field,
            36 "exposure" => exposure: field,
            37 "removableMediaBusType" => removable_media_bus_type: field,
            38 "removableMediaVendor" => removable_media_vendor: field,
            39 "removableMediaName" => removable_media_name: field,
            40 "removableMediaSerialNumber" => removable_media_serial_number: field,
            41 "removableMediaCapacity" => removable_media_capacity: field,
            42 "cloudDriveId" => cloud_drive_id: field,
            43 "riskSeverity" => risk_severity: field,
        })?;
        scan.end()?;
        Some(view)
    }
}

/// Any value as a [`FieldValue`], as `FieldValue`'s `Deserialize` reads it.
fn field<'a>(scan: &mut JsonScan<'a>) -> Option<FieldValue<'a>> {
    Some(match scan.peek()? {
        b'"' => FieldValue::Text(scan.string()?),
        b'0'..=b'9' => FieldValue::Positive(scan.unsigned()?),
        b'[' => {
            let mut items = Vec::new();
            scan.list(|scan| {
                items.push(field(scan)?);
                Some(())
            })?;
            FieldValue::List(items)
        }
        b'{' => {
            // The last of a key given twice wins, as in the serde path.
            let (mut cloud_username, mut name) = (None, None);
            scan.object(|scan, key| {
                match key {
                    "cloudUsername" => cloud_username = Some(field(scan)?),
                    "name" => name = Some(field(scan)?),
                    _ => scan.skip()?,
                }
                Some(())
            })?;
            FieldValue::Object(cloud_username.or(name).map(Box::new))
        }
        _ => match scan.literal()? {
            Literal::True => FieldValue::Bool(true),
            Literal::False => FieldValue::Bool(false),
            Literal::Null => FieldValue::Null,
        },
    })
}

/// Passes a value that serde reads only to drop it (where a [`Nested`] or [`ObjectList`] finds
/// the wrong type): a list or object is only checked, as serde ignores it, but a scalar is read,
/// as serde reads it, so that a string with a lone surrogate escape or a number out of range is
/// left to serde, which fails on it there.
fn drop_value(scan: &mut JsonScan<'_>) -> Option<()> {
    match scan.peek()? {
        b'[' | b'{' => scan.skip(),
        _ => field(scan).map(drop),
    }
}

/// `read` where the value is an object, else the value skipped and `Nested(None)`.
fn nested<'a, T>(
    read: fn(&mut JsonScan<'a>) -> Option<T>,
) -> impl Fn(&mut JsonScan<'a>) -> Option<Nested<T>> {
    move |scan| {
        if scan.peek()? == b'{' {
            read(scan).map(|t| Nested(Some(t)))
        } else {
            drop_value(scan).map(|()| Nested(None))
        }
    }
}

/// A list whose objects are read by `read` (other items `None`); anything else skipped and
/// `ObjectList(None)`.
fn object_list<'a, T>(
    read: fn(&mut JsonScan<'a>) -> Option<T>,
) -> impl Fn(&mut JsonScan<'a>) -> Option<ObjectList<T>> {
    move |scan| {
        if scan.peek()? != b'[' {
            return drop_value(scan).map(|()| ObjectList(None));
        }
        let mut items = Vec::new();
        let item = nested(read);
        scan.list(|scan| {
            items.push(item(scan)?.0);
            Some(())
        })?;
        Some(ObjectList(Some(items)))
    }
}

/// `source`: v2's object, or v1's value.
fn source<'a>(scan: &mut JsonScan<'a>) -> Option<SourceField<'a>> {
    if scan.peek()? == b'{' {
        Some(SourceField {
            flat: FieldValue::Object(None),
            nested: Some(v2_source(scan)?),
        })
    } else {
        Some(SourceField {
            flat: field(scan)?,
            nested: None,
        })
    }
}

fn event<'a>(scan: &mut JsonScan<'a>) -> Option<V2Event<'a>> {
    read_object!(scan, V2Event<'a> {
        0 "action" => action: field,
        1 "id" => id: field,
        2 "inserted" => inserted: field,
        3 "observer" => observer: field,
    })
}

fn user<'a>(scan: &mut JsonScan<'a>) -> Option<V2User<'a>> {
    read_object!(scan, V2User<'a> {
        0 "email" => email: field,
        1 "deviceUid" => device_uid: field,
        2 "id" => id: field,
    })
}

fn email<'a>(scan: &mut JsonScan<'a>) -> Option<V2Email<'a>> {
    read_object!(scan, V2Email<'a> {
        0 "sender" => sender: field,
        1 "recipients" => recipients: field,
    })
}

fn media<'a>(scan: &mut JsonScan<'a>) -> Option<V2Media<'a>> {
    read_object!(scan, V2Media<'a> {
        0 "busType" => bus_type: field,
        1 "vendor" => vendor: field,
        2 "name" => name: field,
        3 "serialNumber" => serial_number: field,
        4 "capacity" => capacity: field,
    })
}

fn v2_source<'a>(scan: &mut JsonScan<'a>) -> Option<V2Source<'a>> {
    read_object!(scan, V2Source<'a> {
        0 "email" => email: nested(email),
        1 "name" => name: field,
        2 "domain" => domain: field,
        3 "ip" => ip: field,
        4 "removableMedia" => removable_media: nested(media),
    })
}

fn tab<'a>(scan: &mut JsonScan<'a>) -> Option<V2Tab<'a>> {
    read_object!(scan, V2Tab<'a> {
        0 "url" => url: field,
        1 "title" => title: field,
    })
}

fn destination<'a>(scan: &mut JsonScan<'a>) -> Option<V2Destination<'a>> {
    read_object!(scan, V2Destination<'a> {
        0 "user" => user: nested(user),
        1 "email" => email: nested(email),
        2 "name" => name: field,
        3 "tabs" => tabs: object_list(tab),
        4 "removableMedia" => removable_media: nested(media),
    })
}

fn hash<'a>(scan: &mut JsonScan<'a>) -> Option<V2Hash<'a>> {
    read_object!(scan, V2Hash<'a> {
        0 "md5" => md5: field,
    })
}

fn file<'a>(scan: &mut JsonScan<'a>) -> Option<V2File<'a>> {
    read_object!(scan, V2File<'a> {
        0 "created" => created: field,
        1 "modified" => modified: field,
        2 "name" => name: field,
        3 "directory" => directory: field,
        4 "url" => url: field,
        5 "sizeInBytes" => size_in_bytes: field,
        6 "category" => category: field,
        7 "hash" => hash: nested(hash),
        8 "cloudDriveId" => cloud_drive_id: field,
    })
}

fn process<'a>(scan: &mut JsonScan<'a>) -> Option<V2Process<'a>> {
    read_object!(scan, V2Process<'a> {
        0 "executable" => executable: field,
        1 "owner" => owner: field,
    })
}

fn indicator<'a>(scan: &mut JsonScan<'a>) -> Option<V2Indicator<'a>> {
    read_object!(scan, V2Indicator<'a> {
        0 "name" => name: field,
    })
}

fn risk<'a>(scan: &mut JsonScan<'a>) -> Option<V2Risk<'a>> {
    read_object!(scan, V2Risk<'a> {
        0 "indicators" => indicators: object_list(indicator),
        1 "severity" => severity: field,
    })
}

#[cfg(test)]
#[path = "file_event_scan_tests.rs"]
mod tests;
