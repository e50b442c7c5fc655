//! Code42 CEF mapping against the vendor's fixtures and the CEF parser: exact lines, severities
//! and escaping.

use super::*;
use crate::encode::cef::tests::parse;
use serde_json::json;

const V1: &str = include_str!("../../../tests/fixtures/code42/file_event_v1.json");
const V2: &str = include_str!("../../../tests/fixtures/code42/file_event_v2.json");

fn line(record: &str) -> String {
    file_event(&serde_json::from_str(record).unwrap()).to_line()
}

fn fields(line: &str) -> std::collections::HashMap<String, String> {
    let (_, pairs) = parse(line);
    let keys: Vec<_> = pairs.iter().map(|(k, _)| k.clone()).collect();
    let unique: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "a key appears twice: {line}");
    pairs.into_iter().collect()
}

#[test]
fn golden_v1_file_event() {
    assert_eq!(
        line(V1),
        "CEF:0|Code42|Incydr|1|C42203|READ_BY_APP|8|\
         externalId=0_1d71796f-af5b-4231-9d8e-df6434da4663_9 end=1590669999838 rt=1590670310040 \
         fileCreateTime=1590669814902 fileModificationTime=1590669815105 deviceExternalId=935873453596901068 \
         suser=actor@example.com duser=partner@example.org suid=912098363086307495 shost=HOSTNAME \
         dvchost=host.docker.internal src=162.222.47.183 fname=company_secrets.txt \
         filePath=C:/Users/QA/Downloads/ fsize=265122 fileType=IMAGE fileHash=9cea266b4e07974df1982ae3b9de92ce \
         sproc=chrome.exe spriv=QA sourceServiceName=Endpoint destinationServiceName=GoogleBackupAndSync \
         request=https://mail.example.com/compose?to\\=a@b.c&x\\=1 requestClientApplication=Inbox | Mail \
         reason=ApplicationRead,RemovableMedia cs1=USB cs1Label=Code42AEDRemovableMediaBusType cs2=SanDisk \
         cs2Label=Code42AEDRemovableMediaVendor cs3=Cruzer Blade cs3Label=Code42AEDRemovableMediaName \
         cs4=4C530001100928112135 cs4Label=Code42AEDRemovableMediaSerialNumber cn1=15631122432 \
         cn1Label=Code42AEDRemovableMediaCapacity cs5=0BxHwXeBPLaE5Uk9PVA cs5Label=Code42CloudDriveId \
         cs6=0_1d71796f-af5b-4231-9d8e-df6434da4663_935873453596901068_956171635867906205_5 \
         cs6Label=Code42FileEventId"
    );
}

#[test]
fn golden_v2_file_event() {
    assert_eq!(
        line(V2),
        "CEF:0|Code42|Incydr|1|C42200|removable-media-created|10|\
         externalId=0_c4e43418-07d9-4a9f-a138-29f39a124d33_1 end=1657817586112 rt=1657817820913 \
         fileCreateTime=1657817466186 fileModificationTime=1657817467419 deviceExternalId=1068825680073059134 \
         suser=engineer@example.com suid=1068824450489230065 shost=DESKTOP-1234 dvchost=corp.example.com \
         src=50.237.14.12 fname=roadmap.xlsx filePath=E:/exports/ fsize=1801792 fileType=Spreadsheet \
         fileHash=1b9d1a23ef7f0b2d3d8a0cf1c2e16f3a sproc=C:\\\\Windows\\\\explorer.exe spriv=CORP\\\\engineer \
         sourceServiceName=Endpoint destinationServiceName=SanDisk Cruzer \
         request=https://planner.example.com/export?id\\=7 requestClientApplication=Export | Planner \
         reason=Removable media,Spreadsheet cs1=USB cs1Label=Code42AEDRemovableMediaBusType cs2=SanDisk \
         cs2Label=Code42AEDRemovableMediaVendor cs3=Cruzer Blade cs3Label=Code42AEDRemovableMediaName \
         cs4=4C530001100928112135 cs4Label=Code42AEDRemovableMediaSerialNumber cn1=15631122432 \
         cn1Label=Code42AEDRemovableMediaCapacity \
         cs6=0_c4e43418-07d9-4a9f-a138-29f39a124d33_1068825680073059134_1068826271084047166_1_EPS \
         cs6Label=Code42FileEventId"
    );
}

/// Every row of the mapping table, v1 field → CEF key, checked one by one on the v1 fixture
/// (with the fields that lose a precedence contest removed, so each row is seen winning).
#[test]
fn every_row_of_the_v1_table_is_mapped() {
    let base: Value = serde_json::from_str(V1).unwrap();
    let without = |drop: &[&str]| {
        let mut v = base.clone();
        for k in drop {
            v.as_object_mut().unwrap().remove(*k);
        }
        fields(&file_event(&v).to_line())
    };
    let all = without(&[]);
    let rows: [(&str, &str, &str); 24] = [
        ("actor", "suser", "actor@example.com"),
        ("createTimestamp", "fileCreateTime", "1590669814902"),
        ("deviceUid", "deviceExternalId", "935873453596901068"),
        ("domainName", "dvchost", "host.docker.internal"),
        (
            "eventId",
            "externalId",
            "0_1d71796f-af5b-4231-9d8e-df6434da4663_9",
        ),
        ("eventTimestamp", "end", "1590669999838"),
        ("exposure", "reason", "ApplicationRead,RemovableMedia"),
        ("fileCategory", "fileType", "IMAGE"),
        ("fileName", "fname", "company_secrets.txt"),
        ("filePath", "filePath", "C:/Users/QA/Downloads/"),
        ("fileSize", "fsize", "265122"),
        ("insertionTimestamp", "rt", "1590670310040"),
        (
            "md5Checksum",
            "fileHash",
            "9cea266b4e07974df1982ae3b9de92ce",
        ),
        ("modifyTimestamp", "fileModificationTime", "1590669815105"),
        ("osHostName", "shost", "HOSTNAME"),
        ("processName", "sproc", "chrome.exe"),
        ("processOwner", "spriv", "QA"),
        ("publicIpAddress", "src", "162.222.47.183"),
        ("removableMediaBusType", "cs1", "USB"),
        ("removableMediaCapacity", "cn1", "15631122432"),
        ("removableMediaName", "cs3", "Cruzer Blade"),
        ("removableMediaSerialNumber", "cs4", "4C530001100928112135"),
        ("removableMediaVendor", "cs2", "SanDisk"),
        ("sharedWith", "duser", "partner@example.org"),
    ];
    for (field, key, value) in rows {
        assert_eq!(
            all.get(key).map(String::as_str),
            Some(value),
            "{field} -> {key}"
        );
    }
    let more: [(&str, &str, &str); 5] = [
        (
            "syncDestination",
            "destinationServiceName",
            "GoogleBackupAndSync",
        ),
        ("userUid", "suid", "912098363086307495"),
        ("windowTitle", "requestClientApplication", "Inbox | Mail"),
        (
            "tabUrl",
            "request",
            "https://mail.example.com/compose?to=a@b.c&x=1",
        ),
        ("cloudDriveId", "cs5", "0BxHwXeBPLaE5Uk9PVA"),
    ];
    for (field, key, value) in more {
        assert_eq!(
            all.get(key).map(String::as_str),
            Some(value),
            "{field} -> {key}"
        );
    }
    assert_eq!(all["cs1Label"], "Code42AEDRemovableMediaBusType");
    assert_eq!(all["cs2Label"], "Code42AEDRemovableMediaVendor");
    assert_eq!(all["cs3Label"], "Code42AEDRemovableMediaName");
    assert_eq!(all["cn1Label"], "Code42AEDRemovableMediaCapacity");
    assert_eq!(all["cs5Label"], "Code42CloudDriveId");
    assert!(!all.contains_key("aid"), "aid is consumer-only");
    // The rows that share a key, each seen winning once its betters are gone.
    assert_eq!(
        without(&["actor"])["suser"],
        "test@example.com",
        "deviceUserName -> suser"
    );
    assert_eq!(
        without(&["actor", "deviceUserName"])["suser"],
        "sender@example.com",
        "emailSender -> suser"
    );
    assert_eq!(
        without(&["sharedWith"])["duser"],
        "r1@example.org,r2@example.org",
        "emailRecipients -> duser"
    );
    assert_eq!(
        without(&["filePath"])["filePath"],
        "https://drive.example.com/file/d/1",
        "url -> filePath"
    );
}

#[test]
fn v2_nested_fields_map_to_the_same_keys_as_v1() {
    let v2 = fields(&line(V2));
    for key in [
        "externalId",
        "end",
        "rt",
        "fileCreateTime",
        "fileModificationTime",
        "deviceExternalId",
        "suser",
        "suid",
        "shost",
        "dvchost",
        "src",
        "fname",
        "filePath",
        "fsize",
        "fileType",
        "fileHash",
        "sproc",
        "spriv",
        "destinationServiceName",
        "request",
        "requestClientApplication",
        "reason",
        "cs1",
        "cs2",
        "cs3",
        "cs4",
        "cn1",
    ] {
        assert!(v2.contains_key(key), "v2 event lacks {key}");
    }
    let mut email: Value = serde_json::from_str(V2).unwrap();
    email["user"]["email"] = Value::Null;
    email["source"]["email"]["sender"] = json!("boss@example.com");
    email["destination"]["email"]["recipients"] = json!(["x@example.org"]);
    email["file"]["directory"] = Value::Null;
    email["file"]["url"] = json!("https://box.example.com/f/9");
    email["file"]["cloudDriveId"] = json!("drive-7");
    let mapped = fields(&file_event(&email).to_line());
    assert_eq!(mapped["suser"], "boss@example.com");
    assert_eq!(mapped["duser"], "x@example.org");
    assert_eq!(mapped["filePath"], "https://box.example.com/f/9");
    assert_eq!(mapped["cs5"], "drive-7");
}

#[test]
fn event_classes_follow_the_table() {
    for (v1, v2, class) in [
        ("CREATED", "file-created", "C42200"),
        ("MODIFIED", "file-modified", "C42201"),
        ("DELETED", "file-deleted", "C42202"),
        ("READ_BY_APP", "application-read", "C42203"),
        ("EMAILED", "file-emailed", "C42204"),
        ("DOWNLOADED", "file-downloaded", "C42000"),
    ] {
        assert_eq!(class_id(v1), class, "{v1}");
        assert_eq!(class_id(v2), class, "{v2}");
    }
}

#[test]
fn hostile_values_cannot_forge_fields() {
    let mut v: Value = serde_json::from_str(V1).unwrap();
    v["fileName"] = json!("a=b\\c|d\r\nsuser=root act=blocked");
    v["eventType"] = json!("READ|BY\nAPP");
    let line = file_event(&v).to_line();
    let (header, pairs) = parse(&line);
    assert_eq!(header[5], "READ|BY APP");
    let fname: Vec<_> = pairs.iter().filter(|(k, _)| k == "fname").collect();
    assert_eq!(fname.len(), 1);
    assert_eq!(fname[0].1, "a=b\\c|d\nsuser=root act=blocked");
    assert_eq!(pairs.iter().filter(|(k, _)| k == "suser").count(), 1);
    assert!(!pairs.iter().any(|(k, _)| k == "act"));
}

#[test]
fn golden_alert_with_observations() {
    let alert_record = json!({
        "type$": "ALERT_DETAILS", "tenantId": "t-1", "type": "FED_ENDPOINT_EXFILTRATION",
        "id": "a1b2c3d4-0000-4000-8000-000000000001", "createdAt": "2022-09-15T20:48:25.519828Z",
        "state": "OPEN", "name": "Exfiltration to USB", "description": "Files moved to removable media",
        "actor": "engineer@example.com", "actorId": "1068824450489230065", "riskSeverity": "HIGH",
        "ruleId": "rule-9", "watchlists": [{"id": "w1", "name": "Departing Employee"}],
        "observations": [{"id": "o1", "type": "FedEndpointExfiltration", "data": "{}"}]
    });
    assert_eq!(
        alert(&alert_record).to_line(),
        "CEF:0|Code42|Incydr|1|FED_ENDPOINT_EXFILTRATION|Exfiltration to USB|8|\
         externalId=a1b2c3d4-0000-4000-8000-000000000001 rt=1663274905519 suser=engineer@example.com \
         suid=1068824450489230065 msg=Files moved to removable media cat=alert cs1=rule-9 \
         cs1Label=Code42RuleId cs2=OPEN cs2Label=Code42AlertState cs3=Departing Employee \
         cs3Label=Code42Watchlists cn1=1 cn1Label=Code42Observations"
    );
}

#[test]
fn golden_session() {
    let s = json!({
        "sessionId": "s-42", "tenantId": "t-1", "actorId": "a-7", "actorName": "engineer@example.com",
        "beginTime": 1700000000000i64, "endTime": 1700000600000i64, "lastUpdated": 1700000900000i64,
        "exfiltrationSummary": "3 files to USB",
        "scores": [{"score": 4, "severity": 1}, {"score": 9, "severity": 3}],
        "states": [{"state": "OPEN"}, {"state": "CLOSED_TP"}],
        "triggeredAlerts": [{"ruleName": "USB exfil"}, {"ruleName": "Departing"}]
    });
    assert_eq!(
        session(&s).to_line(),
        "CEF:0|Code42|Incydr|1|C42Session|3 files to USB|8|externalId=s-42 start=1700000000000 \
         end=1700000600000 rt=1700000900000 suser=engineer@example.com suid=a-7 cat=session \
         cs1=CLOSED_TP cs1Label=Code42SessionState cs2=USB exfil,Departing cs2Label=Code42AlertRules \
         cn1=9 cn1Label=Code42RiskScore"
    );
}

/// The line a sink makes from a record's text (`file_event_text`, read in one pass) is the line
/// made from its parsed `Value`, for the fixtures and for records of every odd shape: fields of
/// other types than documented, lists of people, keys given twice (at the top and nested), text
/// that is not an object or not JSON.
#[test]
fn a_record_read_from_its_text_maps_as_its_value_does() {
    let mut records: Vec<String> = vec![V1.to_string(), V2.to_string()];
    let odd = [
        // v1 with lists, numbers, booleans, objects and nulls where text is documented.
        r#"{"eventId":7,"eventType":"CREATED","insertionTimestamp":1700000000000,
            "eventTimestamp":-5,"createTimestamp":1.5e3,"modifyTimestamp":"2026-01-02T03:04:05.678+01:00",
            "actor":null,"deviceUserName":["a",{"cloudUsername":"b"},{"name":"c"},{"cloudUsername":null,"name":"d"},[1,true],""],
            "sharedWith":[{"cloudUsername":"x@y"},{"name":{"nested":1}}],"emailRecipients":{"to":"z"},
            "fileSize":12.0,"md5Checksum":false,"source":{"v2":"no"},"tabUrls":["u1","u2"],
            "windowTitle":[],"exposure":["A","B"],"removableMediaCapacity":"15631122432",
            "publicIpAddress":"::1","riskSeverity":"HIGH","cloudDriveId":18446744073709551615}"#,
        // v2 with the wrong types under its objects, tabs mixing objects and not, media on the source.
        r#"{"event":{"id":"e-1","action":"file-emailed","inserted":"2026-11-30T10:00:00Z","observer":["Endpoint"]},
            "@timestamp":1700000000123,"user":"not an object","source":{"email":{"sender":["s@x"]},"name":5,
            "ip":"[2001:db8::1]","removableMedia":{"busType":"USB","capacity":"7"}},
            "destination":{"user":{"email":null},"email":{"recipients":["r1","r2"]},"tabs":[1,{"url":"t1","title":["T",2]},{"title":null},{"url":"t2"}],
            "removableMedia":{"busType":""}},"file":{"hash":[],"sizeInBytes":-3,"directory":"C:\\tmp\\"},
            "process":null,"risk":{"indicators":[{"name":"I1"},"x",{"name":["I2","I3"]}],"severity":"CRITICAL"}}"#,
        // v2 whose tabs are not a list, and a first tab without a url.
        r#"{"event":{"id":"e-2","action":"x"},"destination":{"tabs":{"url":"no"}}}"#,
        r#"{"event":{"id":"e-3","action":"x"},"destination":{"tabs":[{"title":"only"},{"url":"second"}]}}"#,
        // `event` not an object: read as v1.
        r#"{"event":"created","eventType":"DELETED","eventId":"v1-1","fileName":"f"}"#,
        // Keys given twice, at the top and nested: the last wins.
        r#"{"eventId":"first","eventId":"second","fileName":"a","fileName":"b"}"#,
        r#"{"event":{"id":"n-1","id":"n-2","action":"created"},"file":{"name":"a","name":"b"}}"#,
        r#"{"eventId":"d","sharedWith":[{"cloudUsername":"a","cloudUsername":"b"}]}"#,
        // Escapes in strings, which cannot be borrowed.
        r#"{"eventId":"esc\u0041\"\\","fileName":"line\nbreak","actor":"tab\tand=equals|pipe"}"#,
        // Not an object, or not JSON.
        "[1,2,3]",
        "\"text\"",
        "null",
        "{\"eventId\":",
        "",
    ];
    records.extend(odd.iter().map(|r| r.to_string()));
    for text in &records {
        let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        assert_eq!(
            file_event_text(text).to_line(),
            file_event(&value).to_line(),
            "{text}"
        );
    }
    // The odd records are not all mapped to nothing: the comparison above compares lines.
    let duplicate = file_event_text(odd[5]).to_line();
    assert!(
        duplicate.contains("externalId=second") && duplicate.contains("fname=b"),
        "{duplicate}"
    );
    let people = file_event_text(odd[0]).to_line();
    assert!(people.contains("suser=a,b,c,1,true"), "{people}");
}

/// A record a `Value` cannot hold, for what is in a part the mapping does not read, is mapped
/// from the fields it has (it reached the outbox: the source reads only id, time and severity).
#[test]
fn a_record_a_value_cannot_hold_is_mapped_from_the_fields_it_has() {
    for odd in [
        r#""x":1e999"#,
        r#""x":"\ud800""#,
        r#""actor":"a","y":{"k":-1e999}"#,
    ] {
        let text = format!(
            r#"{{"eventId":"e1","eventType":"file-created","insertionTimestamp":"2024-01-01T00:00:00Z",{odd}}}"#
        );
        assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
        let line = file_event_text(&text).to_line();
        assert!(
            line.starts_with(
                "CEF:0|Code42|Incydr|1|C42200|file-created|5|externalId=e1 rt=1704067200000"
            ),
            "{text}: {line}"
        );
    }
}
