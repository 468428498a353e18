//! In-database tests of templates and channel secrets.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::{count, run};
    use pgrx::prelude::*;

    #[pg_test]
    fn a_template_is_checked_when_saved() {
        run("INSERT INTO engage.templates (name, channel, subject, body) VALUES ('ok', 'email', 'Hi {{ profile.first_name | default: \"there\" }}', 'Body')");
        assert_eq!(count("SELECT count(*) FROM engage.templates"), 1);
    }

    #[pg_test(error = "invalid template: range (1..100000000) is longer than 1000")]
    fn an_unbounded_template_is_rejected_when_saved() {
        run("INSERT INTO engage.templates (name, channel, body) VALUES ('big', 'sms', '{% for i in (1..100000000) %}x{% endfor %}')");
    }

    #[pg_test(error = "permission denied for table channel_secrets")]
    fn channel_secrets_are_not_readable_by_other_roles() {
        run("CREATE ROLE engage_test_reader");
        run("GRANT USAGE ON SCHEMA engage TO engage_test_reader");
        run("GRANT SELECT ON engage.channels TO engage_test_reader");
        run("SET LOCAL ROLE engage_test_reader");
        assert_eq!(count("SELECT count(*) FROM engage.channels"), 0);
        run("SELECT * FROM engage.channel_secrets");
    }
}
