//! Golden outcomes of the JSON and line-protocol decoders, recorded from the decoders that
//! built a `serde_json::Value` tree and owned `String`s per key: every edge case below must
//! keep its exact outcome (reading or error text) whatever the decoders do inside.

use super::*;

fn schema() -> Schema {
    Schema::new(vec!["vibration".into(), "temp".into()], "device".into())
}

/// A reading as `ok <device> <ts> <values>`, an error as `<reason>: <message>`.
fn outcome(r: Result<Reading, DecodeError>) -> String {
    match r {
        Ok(r) => format!("ok {:?} {} {:?}", r.device, r.ts, r.values),
        Err(e) => format!("{}: {e}", e.reason()),
    }
}

/// `(message key, payload, outcome)`.
const JSON: &[(Option<&str>, &str, &str)] = &[
    (
        None,
        r#"{"device":"pump-7","ts":1795748248000,"values":{"vibration":0.12,"temp":71.3}}"#,
        "ok \"pump-7\" 1795748248000000000 [0.12, 71.3]",
    ),
    (
        None,
        " \t{\"device\":\"d\",\"ts\":1795748248000,\"values\":{\"vibration\":1,\"temp\":2}} \r\n",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        "",
        "invalid_json: invalid JSON: EOF while parsing a value at line 1 column 0",
    ),
    (
        None,
        "   ",
        "invalid_json: invalid JSON: EOF while parsing a value at line 1 column 3",
    ),
    (
        None,
        "null",
        "invalid_json: invalid JSON: expected a JSON object",
    ),
    (
        None,
        "5",
        "invalid_json: invalid JSON: expected a JSON object",
    ),
    (
        None,
        r#""x""#,
        "invalid_json: invalid JSON: expected a JSON object",
    ),
    (
        None,
        "true",
        "invalid_json: invalid JSON: expected a JSON object",
    ),
    (
        None,
        "[1,2]",
        "invalid_json: invalid JSON: expected a JSON object",
    ),
    (
        None,
        "[1,2",
        "invalid_json: invalid JSON: EOF while parsing a list at line 1 column 4",
    ),
    (
        None,
        "{",
        "invalid_json: invalid JSON: EOF while parsing an object at line 1 column 1",
    ),
    (
        None,
        "{}",
        "invalid_json: invalid JSON: missing \"values\" object",
    ),
    (
        Some("k"),
        "{}",
        "invalid_json: invalid JSON: missing \"values\" object",
    ),
    (
        None,
        r#"{"device":"d"} x"#,
        "invalid_json: invalid JSON: trailing characters at line 1 column 16",
    ),
    (
        None,
        r#"{"device":"d",}"#,
        "invalid_json: invalid JSON: trailing comma at line 1 column 15",
    ),
    (
        None,
        "{'a':1}",
        "invalid_json: invalid JSON: key must be a string at line 1 column 2",
    ),
    (
        None,
        r#"{"a":1 "b":2}"#,
        "invalid_json: invalid JSON: expected `,` or `}` at line 1 column 8",
    ),
    (
        None,
        r#"{"a" 1}"#,
        "invalid_json: invalid JSON: expected `:` at line 1 column 6",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2}}}"#,
        "invalid_json: invalid JSON: trailing characters at line 1 column 68",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2}}{}"#,
        "invalid_json: invalid JSON: trailing characters at line 1 column 68",
    ),
    (
        None,
        "\u{feff}{\"device\":\"d\",\"ts\":1795748248000,\"values\":{\"vibration\":1,\"temp\":2}}",
        "invalid_json: invalid JSON: expected value at line 1 column 1",
    ),
    (
        None,
        r#"{"device":null,"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: \"device\" must be a string, found null",
    ),
    (
        Some("k"),
        r#"{"device":null,"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: \"device\" must be a string, found null",
    ),
    (
        None,
        r#"{"device":true,"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: \"device\" must be a string, found a boolean",
    ),
    (
        None,
        r#"{"device":[],"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: \"device\" must be a string, found an array",
    ),
    (
        None,
        r#"{"device":{"a":1},"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: \"device\" must be a string, found an object",
    ),
    (
        None,
        r#"{"device":7,"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"7\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":-7,"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"-7\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":7.5,"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"7.5\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":7.0,"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"7.0\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":1e3,"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"1000.0\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":1E300,"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"1e+300\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":-0,"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"-0.0\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":18446744073709551616,"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"1.8446744073709552e+19\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "missing_device: missing device id (no message key and no \"device\" field or tag)",
    ),
    (
        Some("k"),
        r#"{"device":"","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "missing_device: missing device id (no message key and no \"device\" field or tag)",
    ),
    (
        Some("k"),
        r#"{"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"k\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        Some(""),
        r#"{"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "missing_device: missing device id (no message key and no \"device\" field or tag)",
    ),
    (
        Some("k"),
        r#"{"device":"p","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"p\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"a\u0000b","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_device: invalid device id: \"a\\0b\"… must be at most 256 bytes without control characters",
    ),
    (
        None,
        r#"{"device":"a\nb","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_device: invalid device id: \"a\\nb\"… must be at most 256 bytes without control characters",
    ),
    (
        None,
        r#"{"device":"pump\u002d7 \"q\" \\ \/","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"pump-7 \\\"q\\\" \\\\ /\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"p\u00fcmp \ud83d\ude00","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"pümp 😀\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"\ud800","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: unexpected end of hex escape at line 1 column 18",
    ),
    (
        None,
        r#"{"device":"\x","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: invalid escape at line 1 column 13",
    ),
    (
        None,
        "{\"device\":\"a\tb\",\"ts\":1795748248000,\"values\":{\"vibration\":1,\"temp\":2}}",
        "invalid_json: invalid JSON: control character (\\u0000-\\u001F) found while parsing a string at line 1 column 13",
    ),
    (
        None,
        r#"{"dev\u0069ce":"esc","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"esc\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":true,"device":"d2","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"d2\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d1","device":null,"ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: \"device\" must be a string, found null",
    ),
    (
        None,
        r#"{"device":"d1","ts":1795748248000,"values":{"vibration":1,"temp":2},"device":"d3"}"#,
        "ok \"d3\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"Device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "missing_device: missing device id (no message key and no \"device\" field or tag)",
    ),
    (
        None,
        r#"{"device":"d","values":{"vibration":1,"temp":2}}"#,
        "missing_timestamp: missing timestamp",
    ),
    (
        None,
        r#"{"device":"d","ts":null,"values":{"vibration":1,"temp":2}}"#,
        "missing_timestamp: missing timestamp",
    ),
    (
        None,
        r#"{"device":"d","ts":"2026-11-27T02:57:28Z","values":{"vibration":1,"temp":2}}"#,
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":"2026-11-27T03:57:28.123456789+01:00","values":{"vibration":1,"temp":2}}"#,
        "ok \"d\" 1795748248123456789 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":" 1795748248 ","values":{"vibration":1,"temp":2}}"#,
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":"","values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: \"\" is neither RFC 3339 nor an integer epoch (premature end of input)",
    ),
    (
        None,
        r#"{"device":"d","ts":"yesterday","values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: \"yesterday\" is neither RFC 3339 nor an integer epoch (premature end of input)",
    ),
    (
        None,
        r#"{"device":"d","ts":"1795748248\u0030","values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: 17957482480 overflows",
    ),
    (
        None,
        r#"{"device":"d","ts":true,"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: expected a string or integer, found a boolean",
    ),
    (
        None,
        r#"{"device":"d","ts":[],"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: expected a string or integer, found an array",
    ),
    (
        None,
        r#"{"device":"d","ts":{},"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: expected a string or integer, found an object",
    ),
    (
        None,
        r#"{"device":"d","ts":1.5,"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: 1.5 is not an integer epoch",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000.0,"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: 1795748248000.0 is not an integer epoch",
    ),
    (
        None,
        r#"{"device":"d","ts":1.795748248e12,"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: 1795748248000.0 is not an integer epoch",
    ),
    (
        None,
        r#"{"device":"d","ts":-1,"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: -1000000000 ns since the epoch is outside 1990-01-01..2200-01-01",
    ),
    (
        None,
        r#"{"device":"d","ts":-0,"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: -0.0 is not an integer epoch",
    ),
    (
        None,
        r#"{"device":"d","ts":5,"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: 5000000000 ns since the epoch is outside 1990-01-01..2200-01-01",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248,"values":{"vibration":1,"temp":2}}"#,
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000000000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":9223372036854775807,"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: 9223372036854775807 ns since the epoch is outside 1990-01-01..2200-01-01",
    ),
    (
        None,
        r#"{"device":"d","ts":-9223372036854775808,"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: -9223372036854775808 ns since the epoch is outside 1990-01-01..2200-01-01",
    ),
    (
        None,
        r#"{"device":"d","ts":18446744073709551615,"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: 18446744073709551615 is not an integer epoch",
    ),
    (
        None,
        r#"{"device":"d","ts":99999999999999999999,"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: 1e+20 is not an integer epoch",
    ),
    (
        None,
        r#"{"device":"d","ts":99999999999,"values":{"vibration":1,"temp":2}}"#,
        "bad_timestamp: bad timestamp: 99999999999 overflows",
    ),
    (
        None,
        r#"{"device":"d","ts":1e400,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: number out of range at line 1 column 24",
    ),
    (
        None,
        r#"{"device":"d","ts":01,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: invalid number at line 1 column 21",
    ),
    (
        None,
        r#"{"device":"d","t\u0073":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":"bad","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"ts":null,"values":{"vibration":1,"temp":2}}"#,
        "missing_timestamp: missing timestamp",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000}"#,
        "invalid_json: invalid JSON: missing \"values\" object",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":null}"#,
        "invalid_json: invalid JSON: \"values\" must be an object, found null",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":[]}"#,
        "invalid_json: invalid JSON: \"values\" must be an object, found an array",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":[1,2]}"#,
        "invalid_json: invalid JSON: \"values\" must be an object, found an array",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":"x"}"#,
        "invalid_json: invalid JSON: \"values\" must be an object, found a string",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":1}"#,
        "invalid_json: invalid JSON: \"values\" must be an object, found a number",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":true}"#,
        "invalid_json: invalid JSON: \"values\" must be an object, found a boolean",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{}}"#,
        "missing_feature: missing feature \"vibration\"",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"temp":2}}"#,
        "missing_feature: missing feature \"vibration\"",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1}}"#,
        "missing_feature: missing feature \"temp\"",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":"high","temp":2}}"#,
        "wrong_type: feature \"vibration\" has the wrong type: a string",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":null,"temp":2}}"#,
        "wrong_type: feature \"vibration\" has the wrong type: null",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":true,"temp":2}}"#,
        "wrong_type: feature \"vibration\" has the wrong type: a boolean",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":[1],"temp":2}}"#,
        "wrong_type: feature \"vibration\" has the wrong type: an array",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":{"a":1},"temp":2}}"#,
        "wrong_type: feature \"vibration\" has the wrong type: an object",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1e39,"temp":2}}"#,
        "not_finite: feature \"vibration\" is not a finite number",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":-1e39,"temp":2}}"#,
        "not_finite: feature \"vibration\" is not a finite number",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1e308,"temp":2}}"#,
        "not_finite: feature \"vibration\" is not a finite number",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1e400,"temp":2}}"#,
        "invalid_json: invalid JSON: number out of range at line 1 column 60",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":-0,"temp":-0.0}}"#,
        "ok \"d\" 1795748248000000000 [-0.0, -0.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":18446744073709551615,"temp":-9223372036854775808}}"#,
        "ok \"d\" 1795748248000000000 [1.8446744e19, -9.223372e18]",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":3.4028235e38,"temp":1e-50}}"#,
        "ok \"d\" 1795748248000000000 [3.4028235e38, 0.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":3.4028236e38,"temp":2}}"#,
        "not_finite: feature \"vibration\" is not a finite number",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1.,"temp":2}}"#,
        "invalid_json: invalid JSON: invalid number at line 1 column 58",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":+1,"temp":2}}"#,
        "invalid_json: invalid JSON: expected value at line 1 column 56",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":NaN,"temp":2}}"#,
        "invalid_json: invalid JSON: expected value at line 1 column 56",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"t\u0065mp":2}}"#,
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2,"rpm":3}}"#,
        "unknown_feature: unknown feature \"rpm\" (the stream's features are vibration, temp)",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2,"rpm":"x"}}"#,
        "unknown_feature: unknown feature \"rpm\" (the stream's features are vibration, temp)",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2,"":3}}"#,
        "unknown_feature: unknown feature \"\" (the stream's features are vibration, temp)",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":"x","a":3}}"#,
        "unknown_feature: unknown feature \"a\" (the stream's features are vibration, temp)",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"zzz":3,"vibration":1,"temp":"x"}}"#,
        "wrong_type: feature \"temp\" has the wrong type: a string",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":"x","temp":1e39}}"#,
        "not_finite: feature \"temp\" is not a finite number",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"temp":1e39,"vibration":"x"}}"#,
        "not_finite: feature \"temp\" is not a finite number",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"zz":1,"rpm":2,"vibration":1,"temp":2}}"#,
        "unknown_feature: unknown feature \"rpm\" (the stream's features are vibration, temp)",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"Temp":1,"vibration":1,"temp":"x"}}"#,
        "unknown_feature: unknown feature \"Temp\" (the stream's features are vibration, temp)",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":"x","vibration":1,"temp":2}}"#,
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"vibration":"x","temp":2}}"#,
        "wrong_type: feature \"vibration\" has the wrong type: a string",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1e39,"vibration":5,"temp":2}}"#,
        "ok \"d\" 1795748248000000000 [5.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"vibration":2,"temp":2}}"#,
        "ok \"d\" 1795748248000000000 [2.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"rpm":1,"rpm":2,"vibration":1,"temp":2}}"#,
        "unknown_feature: unknown feature \"rpm\" (the stream's features are vibration, temp)",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":"x"},"values":{"vibration":1,"temp":2}}"#,
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2},"values":{"vibration":1}}"#,
        "missing_feature: missing feature \"temp\"",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2},"values":7}"#,
        "invalid_json: invalid JSON: \"values\" must be an object, found a number",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"v\u0061lues":{"vibration":1,"temp":2}}"#,
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"meta":{"a":[1,{"b":null}],"c":"\u00e9"},"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2},"extra":[true,false,null,1.5,"s"]}"#,
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ),
    (
        None,
        r#"{"meta":[1,2,,3],"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: expected value at line 1 column 14",
    ),
    (
        None,
        r#"{"meta":"\q","device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: invalid escape at line 1 column 11",
    ),
    (
        None,
        r#"{"meta":1e400,"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2}}"#,
        "invalid_json: invalid JSON: number out of range at line 1 column 13",
    ),
    (
        None,
        r#"{"device":"d","ts":1795748248000,"values":{"vibration":1,"temp":2,"rpm":[1,2,,]}}"#,
        "invalid_json: invalid JSON: expected value at line 1 column 78",
    ),
    (
        None,
        r#"{"device":true,"ts":"bad","values":{"vibration":"x"}}"#,
        "invalid_json: invalid JSON: \"device\" must be a string, found a boolean",
    ),
    (
        None,
        r#"{"ts":"bad","values":{"vibration":"x"}}"#,
        "bad_timestamp: bad timestamp: \"bad\" is neither RFC 3339 nor an integer epoch (premature end of input)",
    ),
    (
        None,
        r#"{"device":"","values":{"vibration":"x"}}"#,
        "wrong_type: feature \"vibration\" has the wrong type: a string",
    ),
    (
        None,
        r#"{"device":"","values":7}"#,
        "invalid_json: invalid JSON: \"values\" must be an object, found a number",
    ),
    (
        None,
        r#"{"device":"","ts":"bad"}"#,
        "bad_timestamp: bad timestamp: \"bad\" is neither RFC 3339 nor an integer epoch (premature end of input)",
    ),
    (
        None,
        r#"{"values":{"vibration":1}}"#,
        "missing_device: missing device id (no message key and no \"device\" field or tag)",
    ),
    (
        None,
        r#"{"device":"a\u0001","values":{"vibration":1}}"#,
        "invalid_device: invalid device id: \"a\\u{1}\"… must be at most 256 bytes without control characters",
    ),
    (
        None,
        r#"{"ts":1795748248000,"values":{"vibration":1}}"#,
        "missing_device: missing device id (no message key and no \"device\" field or tag)",
    ),
    (
        None,
        r#"{"device":true,"ts":1795748248000,"values":{"vibration":1,"temp":2}"#,
        "invalid_json: invalid JSON: EOF while parsing an object at line 1 column 67",
    ),
    (
        None,
        r#"{"device":true,"ts":1795748248000,"values":{"rpm":1,"temp":2},"x":}"#,
        "invalid_json: invalid JSON: expected value at line 1 column 67",
    ),
    (
        None,
        r#"{"values":{"vibration":1,"temp":2},"ts":1795748248000,"device":"last"}"#,
        "ok \"last\" 1795748248000000000 [1.0, 2.0]",
    ),
];

#[test]
fn json_edge_cases_keep_their_outcome() {
    let s = schema();
    for (key, msg, want) in JSON {
        assert_eq!(outcome(s.decode_json(*key, msg.as_bytes())), *want, "{msg}");
    }
}

/// Payloads built in code: nesting around serde_json's recursion limit (128), long device ids
/// and bytes that are not UTF-8.
fn built_json() -> Vec<Vec<u8>> {
    let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let wrap = |device: &str, values: &str, extra: &str| {
        format!(r#"{{{extra}"device":"{device}","ts":1795748248000,"values":{{{values}}}}}"#)
            .into_bytes()
    };
    let mut v = Vec::new();
    for n in [125, 126, 127, 128] {
        v.push(wrap(
            "d",
            r#""vibration":1,"temp":2"#,
            &format!(r#""x":{},"#, nest(n)),
        ));
        let rpm = format!(r#""vibration":1,"temp":2,"rpm":{}"#, nest(n - 1));
        v.push(wrap("d", &rpm, ""));
        let vibration = format!(r#""vibration":{},"temp":2"#, nest(n - 1));
        v.push(wrap("d", &vibration, ""));
    }
    v.push(wrap(&"é".repeat(128), r#""vibration":1,"temp":2"#, ""));
    v.push(wrap(&"a".repeat(257), r#""vibration":1,"temp":2"#, ""));
    v.push(
        b"{\"device\":\"a\xffb\",\"ts\":1795748248000,\"values\":{\"vibration\":1,\"temp\":2}}"
            .to_vec(),
    );
    v.push(
        b"{\"device\":\"d\",\"ts\":1795748248000,\"values\":{\"vibration\":1,\"temp\":2}}\xff"
            .to_vec(),
    );
    v.push(
        b"{\"device\":\"d\",\"ts\":1795748248000,\"values\":{\"vi\xffbration\":1,\"temp\":2}}"
            .to_vec(),
    );
    v
}

const BUILT_JSON: &[&str] = &[
    "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    "unknown_feature: unknown feature \"rpm\" (the stream's features are vibration, temp)",
    "wrong_type: feature \"vibration\" has the wrong type: an array",
    "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    "unknown_feature: unknown feature \"rpm\" (the stream's features are vibration, temp)",
    "wrong_type: feature \"vibration\" has the wrong type: an array",
    "invalid_json: invalid JSON: recursion limit exceeded at line 1 column 132",
    "invalid_json: invalid JSON: recursion limit exceeded at line 1 column 198",
    "invalid_json: invalid JSON: recursion limit exceeded at line 1 column 181",
    "invalid_json: invalid JSON: recursion limit exceeded at line 1 column 132",
    "invalid_json: invalid JSON: recursion limit exceeded at line 1 column 198",
    "invalid_json: invalid JSON: recursion limit exceeded at line 1 column 181",
    "ok \"éééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé\" 1795748248000000000 [1.0, 2.0]",
    "invalid_device: invalid device id: \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"… must be at most 256 bytes without control characters",
    "invalid_json: invalid JSON: invalid unicode code point at line 1 column 13",
    "invalid_json: invalid JSON: trailing characters at line 1 column 68",
    "invalid_json: invalid JSON: invalid unicode code point at line 1 column 47",
];

#[test]
fn built_json_keeps_its_outcome() {
    let s = schema();
    let got: Vec<String> = built_json()
        .iter()
        .map(|msg| outcome(s.decode_json(None, msg)))
        .collect();
    assert_eq!(got, BUILT_JSON);
}

#[test]
fn json_device_key_may_be_ts_or_values() {
    let odd = |dk: &str| Schema::new(vec!["a".into(), "ts".into()], dk.into());
    let cases = [
        ("ts", r#"{"ts":1795748248000,"values":{"a":1,"ts":2}}"#),
        (
            "ts",
            r#"{"ts":"2026-11-27T02:57:28Z","values":{"a":1,"ts":2}}"#,
        ),
        ("ts", r#"{"ts":null,"values":{"a":1,"ts":2}}"#),
        ("values", r#"{"ts":1795748248000,"values":{"a":1,"ts":2}}"#),
        ("values", r#"{"ts":1795748248000,"values":"v"}"#),
        (
            "a",
            r#"{"a":"dev","ts":1795748248000,"values":{"a":1,"ts":2}}"#,
        ),
    ];
    let want = [
        "ok \"1795748248000\" 1795748248000000000 [1.0, 2.0]",
        "ok \"2026-11-27T02:57:28Z\" 1795748248000000000 [1.0, 2.0]",
        "invalid_json: invalid JSON: \"ts\" must be a string, found null",
        "invalid_json: invalid JSON: \"values\" must be a string, found an object",
        "invalid_json: invalid JSON: \"values\" must be an object, found a string",
        "ok \"dev\" 1795748248000000000 [1.0, 2.0]",
    ];
    for ((dk, msg), want) in cases.iter().zip(want) {
        assert_eq!(
            outcome(odd(dk).decode_json(None, msg.as_bytes())),
            want,
            "{dk} {msg}"
        );
    }
}

/// `(message key, line, decode_line's outcome, parse_line_protocol's result as Debug)`.
const LINES: &[(Option<&str>, &str, &str, &str)] = &[
    (
        None,
        "pump,device=pump-7,site=a vibration=0.12,temp=71i 1795748248000000000",
        "ok \"pump-7\" 1795748248000000000 [0.12, 71.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"pump-7\"), (\"site\", \"a\")], fields: [(\"vibration\", Number(0.12)), (\"temp\", Number(71.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2 1795748248000000000\n",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2 1795748248000000000\r\n",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2 1795748248000000000 \t ",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2  1795748248000000000",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d  vibration=1,temp=2 1795748248000000000",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2 1 2",
        "invalid_line_protocol: invalid line protocol: timestamp \"1 2\" is not an integer",
        "Err(BadTimestamp(\"1 2\"))",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2 +1795748248000000000",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2 1795748248",
        "bad_timestamp: bad timestamp: 1795748248 ns since the epoch is outside 1990-01-01..2200-01-01",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248) })",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2 -5",
        "bad_timestamp: bad timestamp: -5 ns since the epoch is outside 1990-01-01..2200-01-01",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(-5) })",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2 12a",
        "invalid_line_protocol: invalid line protocol: timestamp \"12a\" is not an integer",
        "Err(BadTimestamp(\"12a\"))",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2 99999999999999999999",
        "invalid_line_protocol: invalid line protocol: timestamp \"99999999999999999999\" is not an integer",
        "Err(BadTimestamp(\"99999999999999999999\"))",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2",
        "missing_timestamp: missing timestamp",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: None })",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2 ",
        "missing_timestamp: missing timestamp",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: None })",
    ),
    (
        Some("k"),
        "pump vibration=1,temp=2 1795748248000000000",
        "ok \"k\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        Some("k"),
        "pump,device=t vibration=1,temp=2 1795748248000000000",
        "ok \"t\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"t\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump vibration=1,temp=2 1795748248000000000",
        "missing_device: missing device id (no message key and no \"device\" field or tag)",
        "Ok(LineProtocol { measurement: \"pump\", tags: [], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=a,device=b vibration=1,temp=2 1795748248000000000",
        "ok \"a\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"a\"), (\"device\", \"b\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,Device=a vibration=1,temp=2 1795748248000000000",
        "missing_device: missing device id (no message key and no \"device\" field or tag)",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"Device\", \"a\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        r"pump,dev\ice=x,device=a\ b vibration=1,temp=2 1795748248000000000",
        "ok \"a b\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"dev\\\\ice\", \"x\"), (\"device\", \"a b\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        r"pump,device\=x=y,device=a\,b\=c\\d vibration=1,temp=2 1795748248000000000",
        "ok \"a,b=c\\\\d\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device=x\", \"y\"), (\"device\", \"a,b=c\\\\d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        r"pump,dev\ice=x vibration=1,temp=2 1795748248000000000",
        "missing_device: missing device id (no message key and no \"device\" field or tag)",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"dev\\\\ice\", \"x\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        r"my\ pump\,x,device=d vibration=1,temp=2 1795748248000000000",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"my pump,x\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        r"pump\=x\y\é,device=d vibration=1,temp=2 1795748248000000000",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump=x\\\\y\\\\é\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        r"pump,device=d vibr\ation=1,temp=2 1795748248000000000",
        "unknown_feature: unknown feature \"vibr\\\\ation\" (the stream's features are vibration, temp)",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibr\\\\ation\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        r"pump,device=d vib\ ration=1,temp=2 1795748248000000000",
        "unknown_feature: unknown feature \"vib ration\" (the stream's features are vibration, temp)",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vib ration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        r"pump,device=d t\emp=1,vibration=2 1795748248000000000",
        "unknown_feature: unknown feature \"t\\\\emp\" (the stream's features are vibration, temp)",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"t\\\\emp\", Number(1.0)), (\"vibration\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        r"pump,device=d te\mp=1,vibration=2,temp=3 1795748248000000000",
        "unknown_feature: unknown feature \"te\\\\mp\" (the stream's features are vibration, temp)",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"te\\\\mp\", Number(1.0)), (\"vibration\", Number(2.0)), (\"temp\", Number(3.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        r"pump,device=d\ vibration=1,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: field \"1795748248000000000\" has no '='",
        "Err(FieldWithoutValue(\"1795748248000000000\"))",
    ),
    (
        None,
        "pump\\",
        "invalid_line_protocol: invalid line protocol: missing fields",
        "Err(NoFields)",
    ),
    (
        None,
        "pump\\ ",
        "invalid_line_protocol: invalid line protocol: missing fields",
        "Err(NoFields)",
    ),
    (
        None,
        "pump,device=d\\",
        "invalid_line_protocol: invalid line protocol: missing fields",
        "Err(NoFields)",
    ),
    (
        None,
        "pump,device=d vibration=1\\,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: field \"vibration\": \"1\\\\\" is not a number, boolean or string",
        "Err(NotAValue { field: \"vibration\", raw: \"1\\\\\" })",
    ),
    (
        None,
        "pump,device=d vibration\\",
        "invalid_line_protocol: invalid line protocol: field \"vibration\\\\\" has no '='",
        "Err(FieldWithoutValue(\"vibration\\\\\"))",
    ),
    (
        None,
        ",device=d vibration=1,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: missing measurement",
        "Err(NoMeasurement)",
    ),
    (
        None,
        " pump,device=d vibration=1,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: missing measurement",
        "Err(NoMeasurement)",
    ),
    (
        None,
        "",
        "invalid_line_protocol: invalid line protocol: empty line",
        "Err(Empty)",
    ),
    (
        None,
        "   ",
        "invalid_line_protocol: invalid line protocol: empty line",
        "Err(Empty)",
    ),
    (
        None,
        "\n",
        "invalid_line_protocol: invalid line protocol: empty line",
        "Err(Empty)",
    ),
    (
        None,
        "pump",
        "invalid_line_protocol: invalid line protocol: missing fields",
        "Err(NoFields)",
    ),
    (
        None,
        "pump ",
        "invalid_line_protocol: invalid line protocol: field \"\" has no '='",
        "Err(FieldWithoutValue(\"\"))",
    ),
    (
        None,
        "pump  ",
        "invalid_line_protocol: invalid line protocol: field \"\" has no '='",
        "Err(FieldWithoutValue(\"\"))",
    ),
    (
        None,
        "pump,device",
        "invalid_line_protocol: invalid line protocol: tag \"device\" has no '='",
        "Err(TagWithoutValue(\"device\"))",
    ),
    (
        None,
        "pump,device vibration=1",
        "invalid_line_protocol: invalid line protocol: tag \"device\" has no '='",
        "Err(TagWithoutValue(\"device\"))",
    ),
    (
        None,
        "pump,device=",
        "invalid_line_protocol: invalid line protocol: empty tag key or value near \"device\"",
        "Err(EmptyTag(\"device\"))",
    ),
    (
        None,
        "pump,device= vibration=1",
        "invalid_line_protocol: invalid line protocol: empty tag key or value near \"device\"",
        "Err(EmptyTag(\"device\"))",
    ),
    (
        None,
        "pump,=d vibration=1",
        "invalid_line_protocol: invalid line protocol: empty tag key or value near \"\"",
        "Err(EmptyTag(\"\"))",
    ),
    (
        None,
        "pump,device=d,",
        "invalid_line_protocol: invalid line protocol: tag \"\" has no '='",
        "Err(TagWithoutValue(\"\"))",
    ),
    (
        None,
        "pump,device=d, vibration=1",
        "invalid_line_protocol: invalid line protocol: tag \"\" has no '='",
        "Err(TagWithoutValue(\"\"))",
    ),
    (
        None,
        "pump,device=d",
        "invalid_line_protocol: invalid line protocol: missing fields",
        "Err(NoFields)",
    ),
    (
        None,
        "pump,device=d vibration",
        "invalid_line_protocol: invalid line protocol: field \"vibration\" has no '='",
        "Err(FieldWithoutValue(\"vibration\"))",
    ),
    (
        None,
        "pump,device=d vibration 1",
        "invalid_line_protocol: invalid line protocol: field \"vibration\" has no '='",
        "Err(FieldWithoutValue(\"vibration\"))",
    ),
    (
        None,
        "pump,device=d =1",
        "invalid_line_protocol: invalid line protocol: empty field key",
        "Err(EmptyFieldKey)",
    ),
    (
        None,
        "pump,device=d vibration=1,",
        "invalid_line_protocol: invalid line protocol: field \"\" has no '='",
        "Err(FieldWithoutValue(\"\"))",
    ),
    (
        None,
        "pump,device=d vibration=1, 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: field \"\" has no '='",
        "Err(FieldWithoutValue(\"\"))",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2,",
        "invalid_line_protocol: invalid line protocol: field \"\" has no '='",
        "Err(FieldWithoutValue(\"\"))",
    ),
    (
        None,
        "pump,device=d vibration=,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: field \"vibration\": \"\" is not a number, boolean or string",
        "Err(NotAValue { field: \"vibration\", raw: \"\" })",
    ),
    (
        None,
        "pump,device=d vibration=\"abc",
        "invalid_line_protocol: invalid line protocol: field \"vibration\": unterminated string",
        "Err(UnterminatedString(\"vibration\"))",
    ),
    (
        None,
        "pump,device=d vibration=\"abc\\",
        "invalid_line_protocol: invalid line protocol: field \"vibration\": unterminated string",
        "Err(UnterminatedString(\"vibration\"))",
    ),
    (
        None,
        "pump,device=d vibration=\"a\\\"b\",temp=2 1795748248000000000",
        "wrong_type: feature \"vibration\" has the wrong type: a string",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Str(\"a\\\"b\")), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=\"a\\\\\",temp=2 1795748248000000000",
        "wrong_type: feature \"vibration\" has the wrong type: a string",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Str(\"a\\\\\")), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=\"a b, c=d\",temp=2 1795748248000000000",
        "wrong_type: feature \"vibration\" has the wrong type: a string",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Str(\"a b, c=d\")), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=\"\",temp=2 1795748248000000000",
        "wrong_type: feature \"vibration\" has the wrong type: a string",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Str(\"\")), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=\"x\"y,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: timestamp \"y,temp=2 1795748248000000000\" is not an integer",
        "Err(BadTimestamp(\"y,temp=2 1795748248000000000\"))",
    ),
    (
        None,
        "pump,device=d vibration=t,temp=2 1795748248000000000",
        "wrong_type: feature \"vibration\" has the wrong type: a boolean",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Bool(true)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=TRUE,temp=2 1795748248000000000",
        "wrong_type: feature \"vibration\" has the wrong type: a boolean",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Bool(true)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=False,temp=2 1795748248000000000",
        "wrong_type: feature \"vibration\" has the wrong type: a boolean",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Bool(false)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=tRuE,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: field \"vibration\": \"tRuE\" is not a number, boolean or string",
        "Err(NotAValue { field: \"vibration\", raw: \"tRuE\" })",
    ),
    (
        None,
        "pump,device=d vibration=1i,temp=2u 1795748248000000000",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=-1u,temp=2 1795748248000000000",
        "ok \"d\" 1795748248000000000 [-1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(-1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=1.5i,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: field \"vibration\": \"1.5i\" is not an integer",
        "Err(NotAnInteger { field: \"vibration\", raw: \"1.5i\" })",
    ),
    (
        None,
        "pump,device=d vibration=1e3i,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: field \"vibration\": \"1e3i\" is not an integer",
        "Err(NotAnInteger { field: \"vibration\", raw: \"1e3i\" })",
    ),
    (
        None,
        "pump,device=d vibration=99999999999999999999u,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: field \"vibration\": \"99999999999999999999u\" is not an integer",
        "Err(NotAnInteger { field: \"vibration\", raw: \"99999999999999999999u\" })",
    ),
    (
        None,
        "pump,device=d vibration=18446744073709551615u,temp=-9223372036854775808i 1795748248000000000",
        "ok \"d\" 1795748248000000000 [1.8446744e19, -9.223372e18]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.8446744073709552e19)), (\"temp\", Number(-9.223372036854776e18))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=inf,temp=2 1795748248000000000",
        "not_finite: feature \"vibration\" is not a finite number",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(inf)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=-infinity,temp=2 1795748248000000000",
        "not_finite: feature \"vibration\" is not a finite number",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(-inf)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=nan,temp=2 1795748248000000000",
        "not_finite: feature \"vibration\" is not a finite number",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(NaN)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=1e39,temp=2 1795748248000000000",
        "not_finite: feature \"vibration\" is not a finite number",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1e39)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=.5,temp=5. 1795748248000000000",
        "ok \"d\" 1795748248000000000 [0.5, 5.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(0.5)), (\"temp\", Number(5.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=+5,temp=-0 1795748248000000000",
        "ok \"d\" 1795748248000000000 [5.0, -0.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(5.0)), (\"temp\", Number(-0.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=0x10,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: field \"vibration\": \"0x10\" is not a number, boolean or string",
        "Err(NotAValue { field: \"vibration\", raw: \"0x10\" })",
    ),
    (
        None,
        "pump,device=d vibration=1_000,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: field \"vibration\": \"1_000\" is not a number, boolean or string",
        "Err(NotAValue { field: \"vibration\", raw: \"1_000\" })",
    ),
    (
        None,
        "pump,device=d vibration=i,temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: field \"vibration\": \"i\" is not a number, boolean or string",
        "Err(NotAValue { field: \"vibration\", raw: \"i\" })",
    ),
    (
        None,
        "pump,device=d x=1,temp=abc 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: field \"temp\": \"abc\" is not a number, boolean or string",
        "Err(NotAValue { field: \"temp\", raw: \"abc\" })",
    ),
    (
        None,
        "pump,device=d vibration=\"s\",x=1 1795748248000000000",
        "wrong_type: feature \"vibration\" has the wrong type: a string",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Str(\"s\")), (\"x\", Number(1.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d x=\"s\",vibration=1 1795748248000000000",
        "unknown_feature: unknown feature \"x\" (the stream's features are vibration, temp)",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"x\", Str(\"s\")), (\"vibration\", Number(1.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=1,vibration=2,temp=3 1795748248000000000",
        "ok \"d\" 1795748248000000000 [2.0, 3.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"vibration\", Number(2.0)), (\"temp\", Number(3.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=inf,vibration=1,temp=1 1795748248000000000",
        "not_finite: feature \"vibration\" is not a finite number",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(inf)), (\"vibration\", Number(1.0)), (\"temp\", Number(1.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d x=1,vibration=1,temp=1 12a",
        "invalid_line_protocol: invalid line protocol: timestamp \"12a\" is not an integer",
        "Err(BadTimestamp(\"12a\"))",
    ),
    (
        None,
        "pump,device=d x=1,vibration=1,temp=1 12",
        "unknown_feature: unknown feature \"x\" (the stream's features are vibration, temp)",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"x\", Number(1.0)), (\"vibration\", Number(1.0)), (\"temp\", Number(1.0))], timestamp: Some(12) })",
    ),
    (
        None,
        "pump vibration=1 12",
        "missing_device: missing device id (no message key and no \"device\" field or tag)",
        "Ok(LineProtocol { measurement: \"pump\", tags: [], fields: [(\"vibration\", Number(1.0))], timestamp: Some(12) })",
    ),
    (
        None,
        "pump vibration=1",
        "missing_device: missing device id (no message key and no \"device\" field or tag)",
        "Ok(LineProtocol { measurement: \"pump\", tags: [], fields: [(\"vibration\", Number(1.0))], timestamp: None })",
    ),
    (
        None,
        "pump,device=d vibration=1",
        "missing_timestamp: missing timestamp",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0))], timestamp: None })",
    ),
    (
        None,
        "pump,device=a\tb vibration=1,temp=2 1795748248000000000",
        "invalid_device: invalid device id: \"a\\tb\"… must be at most 256 bytes without control characters",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"a\\tb\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pümp,device=dé vibration=1,temp=2 1795748248000000000",
        "ok \"dé\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pümp\", tags: [(\"device\", \"dé\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d\u{85} vibration=1,temp=2 1795748248000000000",
        "invalid_device: invalid device id: \"d\\u{85}\"… must be at most 256 bytes without control characters",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\\u{85}\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2 1795748248000000000\u{85}",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=1,temp=2 \u{3000}1795748248000000000",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
        "Ok(LineProtocol { measurement: \"pump\", tags: [(\"device\", \"d\")], fields: [(\"vibration\", Number(1.0)), (\"temp\", Number(2.0))], timestamp: Some(1795748248000000000) })",
    ),
    (
        None,
        "pump,device=d vibration=1 temp=2 1795748248000000000",
        "invalid_line_protocol: invalid line protocol: timestamp \"temp=2 1795748248000000000\" is not an integer",
        "Err(BadTimestamp(\"temp=2 1795748248000000000\"))",
    ),
];

#[test]
fn line_protocol_edge_cases_keep_their_outcome() {
    let s = schema();
    for (key, line, want, parsed) in LINES {
        assert_eq!(
            outcome(s.decode_line(*key, line.as_bytes())),
            *want,
            "{line}"
        );
        assert_eq!(
            format!("{:?}", parse_line_protocol(line)),
            *parsed,
            "{line}"
        );
    }
}

#[test]
fn line_protocol_bytes_keep_their_outcome() {
    let s = schema();
    let lines: [&[u8]; 4] = [
        b"pump,device=d\xff vibration=1,temp=2 1795748248000000000",
        b"\xff",
        b"pump,device=d vibration=1,temp=2 1795748248000000000\n\n",
        b"pump,device=d vibration=1,temp=2 1795748248000000000\n\r\n",
    ];
    let want = [
        "invalid_line_protocol: invalid line protocol: not UTF-8",
        "invalid_line_protocol: invalid line protocol: not UTF-8",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
        "ok \"d\" 1795748248000000000 [1.0, 2.0]",
    ];
    for (line, want) in lines.iter().zip(want) {
        assert_eq!(outcome(s.decode_line(None, line)), want);
    }
}
