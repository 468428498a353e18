//! Consent fails closed: channel names in subscribe / unsubscribe (functions or events) are
//! known channels in any case, or an ERROR; profiles.consent holds only known channels with
//! boolean answers; and only an explicit answer counts. The app's statements run as a member of
//! engage_writer; the owner's session reads what was decided and writes profiles directly.

use pg_engage_it::*;

struct Sessions {
    /// The extension's owner (superuser).
    owner: Client,
    /// An app: a login role that is a member of engage_writer only.
    app: Client,
}

fn setup(db: &str) -> Sessions {
    let mut owner = shared().create_db(db);
    create_trigger(&mut owner, "promo", json!({"event": "visit", "action": email("promo")}));
    owner.batch_execute("INSERT INTO engage.channels (kind, requires_opt_in) VALUES ('sms', true)").unwrap();
    create_trigger(
        &mut owner,
        "promo_sms",
        json!({"event": "visit_sms", "action": {"channel": "sms", "template": "t"}}),
    );
    let app = connect_as_member(shared(), db, "app", &["engage_writer"]);
    Sessions { owner, app }
}

fn consent(c: &mut Client, customer: &str) -> Value {
    c.query_one("SELECT consent FROM engage.profiles WHERE customer_id = $1", &[&customer]).unwrap().get(0)
}

#[test]
fn channel_names_are_case_normalised_and_an_unsubscribe_holds() {
    let Sessions { mut owner, mut app } = setup("consent_case");
    app.execute("SELECT engage.unsubscribe('c20', 'Email')", &[]).unwrap();
    assert_eq!(consent(&mut owner, "c20"), json!({"email": false}));
    let visit = insert_event(&mut app, "c20", "visit", json!({}));
    assert_eq!(decisions_for(&mut owner, visit), vec![suppressed("promo", "consent")]);
    // The same through a plain event with spaces and capitals, then subscribing back.
    insert_event(&mut app, "c21", "unsubscribe", json!({"channel": " EMAIL "}));
    assert_eq!(consent(&mut owner, "c21"), json!({"email": false}));
    app.execute("SELECT engage.subscribe('c21', 'eMail')", &[]).unwrap();
    assert_eq!(consent(&mut owner, "c21"), json!({"email": true}));
    // "all" is every channel, as no channel is.
    app.execute("SELECT engage.unsubscribe('c22', 'ALL')", &[]).unwrap();
    assert_eq!(consent(&mut owner, "c22"), json!({"all": false}));
}

#[test]
fn unknown_channels_are_refused_and_store_nothing() {
    let Sessions { mut owner, mut app } = setup("consent_unknown");
    for channel in ["carrier_pigeon", "", "e-mail"] {
        let db =
            assert_sql_error(&mut app, "SELECT engage.unsubscribe('c1', $1)", &[&channel], "22023", "unknown channel");
        assert!(db.message().contains(&format!("\"{channel}\"")), "{}", db.message());
        assert_sql_error(
            &mut app,
            "INSERT INTO engage.events (customer_id, name, properties) VALUES ('c1', 'subscribe', jsonb_build_object('channel', $1::text))",
            &[&channel],
            "22023",
            "unknown channel",
        );
    }
    assert_eq!(count(&mut owner, "SELECT count(*) FROM engage.events"), 0);
    assert_eq!(count(&mut owner, "SELECT count(*) FROM engage.profiles"), 0);
}

#[test]
fn stored_consent_is_only_known_channels_and_booleans() {
    let Sessions { mut owner, mut app } = setup("consent_stored");
    identify(&mut app, "c1", json!({}));
    for bad in [
        json!({"email": "false"}),
        json!({"email": 0}),
        json!({"email": null}),
        json!({"Email": false}),
        json!({"carrier_pigeon": true}),
        json!(["email"]),
    ] {
        let db = assert_sql_error(
            &mut owner,
            "UPDATE engage.profiles SET consent = $1 WHERE customer_id = 'c1'",
            &[&bad],
            "22023",
            "profiles.consent",
        );
        assert!(db.message().len() < 300, "{}", db.message());
    }
    assert_sql_error(
        &mut owner,
        "INSERT INTO engage.profiles (customer_id, consent) VALUES ('c2', '{\"sms\": \"yes\"}')",
        &[],
        "22023",
        "profiles.consent.sms must be true or false",
    );
    // Only an explicit true opts in where the channel requires it.
    owner.execute("UPDATE engage.profiles SET consent = '{\"sms\": true}' WHERE customer_id = 'c1'", &[]).unwrap();
    identify(&mut app, "c3", json!({}));
    let opted_in = insert_event(&mut app, "c1", "visit_sms", json!({}));
    let silent = insert_event(&mut app, "c3", "visit_sms", json!({}));
    assert_eq!(decisions_for(&mut owner, opted_in), vec![fired("promo_sms")]);
    assert_eq!(decisions_for(&mut owner, silent), vec![suppressed("promo_sms", "consent")]);
}
