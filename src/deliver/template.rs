//! Message templates in Liquid, rendered with the customer's profile, the triggering event and
//! the trigger's payload.
//!
//! Two rules on top of Liquid:
//! - a missing variable renders as empty (and `default` applies to it), at any depth: the render
//!   context is wrapped so that an unknown key is an empty, nil-like value instead of an error;
//! - rendering is bounded in time and memory, whatever the template, so that no template can
//!   stall the deliverer or exhaust its memory or its stack. Over a limit, validation or the
//!   render fails with an error that names it. The limits:
//!   - the template is at most 64 KiB; a `for` range has literal bounds at most 1,000 apart;
//!     blocks nest at most 50 deep, and so do `[…]` indexes, and a tag has at most 50 `and` and
//!     `or` (the parser and the renderer recurse into these);
//!   - at most 100,000 loop iterations per render, all loops and nesting levels together;
//!   - at most 1,000,000 steps per render, so that the work of an iteration is paid for whatever
//!     its body holds: an iteration takes one step per byte of the tags and outputs in its body
//!     (the plain text in it is bounded by the output limit instead), and `sort` and `uniq` take
//!     one per comparison;
//!   - a value that a filter or `capture` makes is at most 256 KiB of text and 10,000 items
//!     (array items and object entries, at any depth); `replace`, `join`, `split` and `date`,
//!     which can make far more than they are given, are refused before they make it;
//!   - at most 32 MiB of values looked up, made by filters or captured per render, counting their
//!     text and 64 bytes per item (a lookup copies its value), and at most 8 MiB kept at once in
//!     the variables that `assign` and `capture` set;
//!   - the output is at most 256 KiB.
//!
//!   The language is the standard library with `for` and `capture` of our own (they count and
//!   measure), every filter measured, and every lookup counted. Left out: `tablerow` (a second
//!   loop, with no use in a message), `ifchanged` (it renders its body into a buffer with no bound)
//!   and `include` and `render` (there are no partials to include, so they could only fail).

// `liquid` re-exports the model of `liquid-core`; the parser and runtime interfaces that the
// bounded tags and filters implement come from `liquid-core`, the standard library from `liquid-lib`.
use liquid::model::{
    ArrayView, DisplayCow, KString, KStringCow, KStringRef, ObjectView, ScalarCow, State, Value, ValueCow, ValueView,
};
use liquid_core::error::ResultLiquidExt;
use liquid_core::parser::{BlockElement, FilterArguments, TryMatchToken};
use liquid_core::runtime::{Interrupt, InterruptRegister, PartialStore, Registers, RuntimeBuilder};
use liquid_core::{
    BlockReflection, Error, Expression, Filter, FilterReflection, Language, ParseBlock, ParseFilter, ParseTag,
    Renderable, Runtime, TagBlock, TagTokenIter, Template,
};
use liquid_lib::stdlib::{self, Range, RangeExpression};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};

const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
const MAX_RANGE: i64 = 1_000;
const MAX_NESTING: usize = 50;
const MAX_CONDITIONS: usize = 50;
const MAX_LOOP_ITERATIONS: usize = 100_000;
const MAX_STEPS: usize = 1_000_000;
const MAX_VALUE_BYTES: usize = 256 * 1024;
const MAX_VALUE_ITEMS: usize = 10_000;
const MAX_PROCESSED_BYTES: usize = 32 * 1024 * 1024;
const MAX_VARIABLE_BYTES: usize = 8 * 1024 * 1024;
const MAX_OUTPUT_BYTES: usize = 256 * 1024;
/// What an array item or object entry counts for in the running totals, besides its text.
const ITEM_BYTES: usize = 64;
/// The most a `date` format makes per byte of it, padding widths aside (`%c` makes 24 bytes).
const DATE_BYTES_PER_FORMAT_BYTE: usize = 16;

thread_local! {
    static LANGUAGE: Language = language();
    /// Where the tags and outputs are in the template being parsed (see [`Extent::steps`]).
    static PARSING: RefCell<Markup> = RefCell::default();
    static BUDGET: RefCell<Budget> = RefCell::default();
}

/// Checks that a template parses and stays within the bounds; the error says what is wrong.
pub fn validate(text: &str) -> Result<(), String> {
    parse(text).map(|_| ())
}

/// Returns true for a template that parses and is bounded, or raises an ERROR saying why not.
/// engage.templates uses it as a CHECK; NULL is valid (an optional part).
#[pgrx::pg_extern(immutable, parallel_safe)]
fn validate_template(template: Option<&str>) -> bool {
    if let Err(problem) = template.map_or(Ok(()), validate) {
        crate::sql_error::invalid_argument(
            format!("invalid template: {problem}"),
            "Templates use Liquid syntax: {{ profile.first_name | default: \"there\" }}.",
        );
    }
    true
}

/// Renders a template with a [`Context`].
pub fn render(text: &str, context: &Context) -> Result<String, String> {
    let template = parse(text)?;
    BUDGET.set(Budget::default());
    let runtime = Metered(RuntimeBuilder::new().set_globals(context).build());
    let mut out = Bounded::new(MAX_OUTPUT_BYTES, Limit::Output);
    let rendered = template.render_to(&mut out, &runtime);
    // A limit passed where the runtime cannot fail (see `record`) fails the render here.
    if let Some(limit) = BUDGET.with_borrow(|budget| budget.exceeded) {
        return Err(limit.message());
    }
    rendered.map_err(|e| e.to_string())?;
    String::from_utf8(out.bytes).map_err(|e| e.to_string())
}

fn parse(text: &str) -> Result<Template, String> {
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(format!("template is {} bytes; the limit is {MAX_TEMPLATE_BYTES}", text.len()));
    }
    PARSING.set(check_markup(text)?);
    let parsed = LANGUAGE.with(|language| liquid_core::parser::parse(text, language));
    PARSING.take();
    parsed.map(Template::new).map_err(|e| e.to_string())
}

/// The standard library, less what cannot be bounded (see the module doc), with our `for` and
/// `capture` and every filter measured.
fn language() -> Language {
    let mut language = Language::empty();
    let tags: [Box<dyn ParseTag>; 6] = [
        Box::new(stdlib::AssignTag),
        Box::new(stdlib::BreakTag),
        Box::new(stdlib::ContinueTag),
        Box::new(stdlib::CycleTag),
        Box::new(stdlib::IncrementTag),
        Box::new(stdlib::DecrementTag),
    ];
    for tag in tags {
        language.tags.register(tag.reflection().tag().to_owned(), tag);
    }
    let blocks: [Box<dyn ParseBlock>; 7] = [
        Box::new(stdlib::RawBlock),
        Box::new(stdlib::IfBlock),
        Box::new(stdlib::UnlessBlock),
        Box::new(stdlib::CommentBlock),
        Box::new(stdlib::CaseBlock),
        Box::new(ForBlock),
        Box::new(CaptureBlock),
    ];
    for block in blocks {
        language.blocks.register(block.reflection().start_tag().to_owned(), block);
    }
    let filters = [
        measured(stdlib::Abs, Precheck::None),
        measured(stdlib::Append, Precheck::None),
        measured(stdlib::AtLeast, Precheck::None),
        measured(stdlib::AtMost, Precheck::None),
        measured(stdlib::Capitalize, Precheck::None),
        measured(stdlib::Ceil, Precheck::None),
        measured(stdlib::Compact, Precheck::None),
        measured(stdlib::Concat, Precheck::None),
        measured(stdlib::Date, Precheck::Date),
        measured(stdlib::Default, Precheck::None),
        measured(stdlib::DividedBy, Precheck::None),
        measured(stdlib::Downcase, Precheck::None),
        measured(stdlib::Escape, Precheck::None),
        measured(stdlib::EscapeOnce, Precheck::None),
        measured(stdlib::First, Precheck::None),
        measured(stdlib::Floor, Precheck::None),
        measured(stdlib::Join, Precheck::Join),
        measured(stdlib::Last, Precheck::None),
        measured(stdlib::Lstrip, Precheck::None),
        measured(stdlib::Map, Precheck::None),
        measured(stdlib::Minus, Precheck::None),
        measured(stdlib::Modulo, Precheck::None),
        measured(stdlib::NewlineToBr, Precheck::None),
        measured(stdlib::Plus, Precheck::None),
        measured(stdlib::Prepend, Precheck::None),
        measured(stdlib::Remove, Precheck::None),
        measured(stdlib::RemoveFirst, Precheck::None),
        measured(stdlib::Replace, Precheck::Replace),
        measured(stdlib::ReplaceFirst, Precheck::None),
        measured(stdlib::Reverse, Precheck::None),
        measured(stdlib::Round, Precheck::None),
        measured(stdlib::Rstrip, Precheck::None),
        measured(stdlib::Size, Precheck::None),
        measured(stdlib::Slice, Precheck::None),
        measured(stdlib::Sort, Precheck::Sort),
        measured(stdlib::SortNatural, Precheck::Sort),
        measured(stdlib::Split, Precheck::Split),
        measured(stdlib::Strip, Precheck::None),
        measured(stdlib::StripHtml, Precheck::None),
        measured(stdlib::StripNewlines, Precheck::None),
        measured(stdlib::Times, Precheck::None),
        measured(stdlib::Truncate, Precheck::None),
        measured(stdlib::TruncateWords, Precheck::None),
        measured(stdlib::Uniq, Precheck::Uniq),
        measured(stdlib::Upcase, Precheck::None),
        measured(stdlib::UrlDecode, Precheck::None),
        measured(stdlib::UrlEncode, Precheck::None),
        measured(stdlib::Where, Precheck::None),
    ];
    for filter in filters {
        language.filters.register(filter.reflection().name().to_owned(), filter);
    }
    language
}

/// Checks what the parser does not bound, before it runs: the `for` ranges, and nesting, which
/// the parser and the renderer recurse into (too deep, it would overflow the stack). Tags and
/// outputs are read as the parser reads them: from `{%` or `{{` to the first `%}` or `}}` that
/// is not in a quoted string (no other token holds one). Returns where they are.
fn check_markup(text: &str) -> Result<Markup, String> {
    let mut markup = Markup { base: text.as_ptr() as usize, len: text.len(), regions: Vec::new() };
    let mut before = 0;
    let mut blocks = 0;
    let mut rest = text;
    while let Some(brace) = rest.find('{') {
        let start = text.len() - rest.len() + brace;
        let after = &rest[brace + 1..];
        let (is_tag, close) = match after.as_bytes().first() {
            Some(b'%') => (true, "%}"),
            Some(b'{') => (false, "}}"),
            _ => {
                rest = after;
                continue;
            }
        };
        let (code, after) = split_markup(&after[1..], close);
        check_indexes(&code)?;
        if is_tag {
            code.iter().try_for_each(|part| check_ranges(part))?;
            check_conditions(&code)?;
            blocks = nest(blocks, code.as_slice().first().copied().unwrap_or_default())?;
        }
        let end = text.len() - after.len();
        markup.regions.push(Region { start, end, before });
        before += end - start;
        rest = after;
    }
    Ok(markup)
}

/// Where a template's tags and outputs are (its markup, as opposed to its plain text).
#[derive(Default)]
struct Markup {
    /// The template's address: the elements that the parser gives are slices of it.
    base: usize,
    len: usize,
    regions: Vec<Region>,
}

/// A tag or an output: its byte range in the template, and the markup bytes before it.
struct Region {
    start: usize,
    end: usize,
    before: usize,
}

impl Markup {
    /// The markup bytes from address `from` to address `to`, or to the end of the template.
    fn bytes_between(&self, from: usize, to: Option<usize>) -> usize {
        let to = to.map_or(self.len, |to| to.saturating_sub(self.base));
        self.before(to).saturating_sub(self.before(from.saturating_sub(self.base)))
    }

    /// The markup bytes before byte `at`.
    fn before(&self, at: usize) -> usize {
        let starting_before = self.regions.partition_point(|region| region.start < at);
        let last = starting_before.checked_sub(1).and_then(|last| self.regions.get(last));
        last.map_or(0, |region| region.before + region.end.min(at) - region.start)
    }
}

/// Splits a tag or an output, from after its `{%` or `{{`, into its code outside quoted strings
/// (in parts) and what follows its `close`; in one pass.
fn split_markup<'t>(text: &'t str, close: &str) -> (Vec<&'t str>, &'t str) {
    let bytes = text.as_bytes();
    let mut code = Vec::new();
    let mut start = 0;
    let mut quote = None;
    for (i, &byte) in bytes.iter().enumerate() {
        match quote {
            Some(open) if byte == open => {
                quote = None;
                start = i + 1;
            }
            Some(_) => {}
            None if byte == b'"' || byte == b'\'' => {
                code.push(&text[start..i]);
                quote = Some(byte);
            }
            None if bytes[i..].starts_with(close.as_bytes()) => {
                code.push(&text[start..i]);
                return (code, &text[i + close.len()..]);
            }
            None => {}
        }
    }
    if quote.is_none() {
        code.push(&text[start..]);
    }
    (code, "")
}

/// Rejects `(a..b)` ranges that are not two integer literals at most `MAX_RANGE` apart.
fn check_ranges(mut tag: &str) -> Result<(), String> {
    while let Some(open) = tag.find('(') {
        let close = tag[open..].find(')').map_or(tag.len(), |c| open + c);
        if let Some((low, high)) = tag[open + 1..close].split_once("..") {
            let range = &tag[open + 1..close];
            match (low.trim().parse::<i64>(), high.trim().parse::<i64>()) {
                (Ok(l), Ok(h)) if h.saturating_sub(l) <= MAX_RANGE => {}
                (Ok(_), Ok(_)) => return Err(format!("range ({range}) is longer than {MAX_RANGE}")),
                _ => return Err(format!("range ({range}) must have integer literal bounds")),
            }
        }
        tag = &tag[close.min(tag.len())..];
        tag = tag.strip_prefix(')').unwrap_or(tag);
    }
    Ok(())
}

/// Rejects `[…]` indexes nested more than `MAX_NESTING` deep.
fn check_indexes(code: &[&str]) -> Result<(), String> {
    let mut depth = 0usize;
    for c in code.iter().flat_map(|part| part.chars()) {
        match c {
            '[' if depth == MAX_NESTING => return Err(format!("indexes are nested more than {MAX_NESTING} deep")),
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Rejects a tag with more than `MAX_CONDITIONS` `and` and `or`. They need no space around them
/// (`"a"or"b"`): any `and` or `or` that does not run on into a longer name counts.
fn check_conditions(code: &[&str]) -> Result<(), String> {
    let operators = |part: &str| {
        ["and", "or"]
            .into_iter()
            .flat_map(|word| part.match_indices(word))
            .filter(|(at, word)| !part[at + word.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
            .count()
    };
    if code.iter().map(|part| operators(part)).sum::<usize>() > MAX_CONDITIONS {
        return Err(format!("a tag has more than {MAX_CONDITIONS} \"and\" and \"or\""));
    }
    Ok(())
}

/// The depth of blocks after a tag, given the depth before it; an error past `MAX_NESTING`.
fn nest(depth: usize, tag: &str) -> Result<usize, String> {
    let tag = tag.trim_start_matches('-').trim_start();
    let name = &tag[..tag.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tag.len())];
    let is_block = |name: &str| LANGUAGE.with(|language| language.blocks.get(name).is_some());
    if is_block(name) {
        if depth == MAX_NESTING {
            return Err(format!("blocks are nested more than {MAX_NESTING} deep"));
        }
        return Ok(depth + 1);
    }
    if name.strip_prefix("end").is_some_and(is_block) {
        return Ok(depth.saturating_sub(1));
    }
    Ok(depth)
}

/// A limit that a render can go over; its message names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Limit {
    Output,
    ValueBytes,
    ValueItems,
    Total(Total),
}

/// A running total of a render, with a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Total {
    Iterations,
    Steps,
    Processed,
    Variables,
}

impl Limit {
    fn message(self) -> String {
        match self {
            Limit::Output => format!("rendered output exceeds {MAX_OUTPUT_BYTES} bytes"),
            Limit::ValueBytes => format!("a template value exceeds {MAX_VALUE_BYTES} bytes"),
            Limit::ValueItems => format!("a template value exceeds {MAX_VALUE_ITEMS} items"),
            Limit::Total(Total::Iterations) => {
                format!("template rendering exceeded {MAX_LOOP_ITERATIONS} loop iterations")
            }
            Limit::Total(Total::Steps) => format!(
                "template rendering exceeded {MAX_STEPS} steps (a loop iteration takes one per byte of \
                 its body's tags and outputs, sort and uniq one per comparison)"
            ),
            Limit::Total(Total::Processed) => format!(
                "template rendering exceeded {MAX_PROCESSED_BYTES} bytes of values looked up, filtered or captured"
            ),
            Limit::Total(Total::Variables) => {
                format!("template variables exceed {MAX_VARIABLE_BYTES} bytes in all")
            }
        }
    }
}

impl Total {
    fn max(self) -> usize {
        match self {
            Total::Iterations => MAX_LOOP_ITERATIONS,
            Total::Steps => MAX_STEPS,
            Total::Processed => MAX_PROCESSED_BYTES,
            Total::Variables => MAX_VARIABLE_BYTES,
        }
    }
}

/// What the render under way has used (one per thread: [`render`] starts each render anew).
#[derive(Default)]
struct Budget {
    iterations: usize,
    steps: usize,
    processed: usize,
    variables: usize,
    /// The first limit passed: from then on every check fails with it.
    exceeded: Option<Limit>,
}

impl Budget {
    fn used(&mut self, total: Total) -> &mut usize {
        match total {
            Total::Iterations => &mut self.iterations,
            Total::Steps => &mut self.steps,
            Total::Processed => &mut self.processed,
            Total::Variables => &mut self.variables,
        }
    }

    /// Adds to a running total; false if that passes its limit, or a limit was passed before.
    fn spend(&mut self, total: Total, amount: usize) -> bool {
        let used = self.used(total);
        *used = used.saturating_add(amount);
        let within = *used <= total.max();
        within && self.exceeded.is_none()
    }
}

/// Adds to a running total of the render under way; the error ends the render.
fn spend(total: Total, amount: usize) -> Result<(), Error> {
    if BUDGET.with_borrow_mut(|budget| budget.spend(total, amount)) {
        Ok(())
    } else {
        Err(over(Limit::Total(total)))
    }
}

/// [`spend`] where the runtime cannot fail (`try_get`, `set_global`): an overrun is recorded, and
/// the render fails at its next check, or at its end.
fn record(total: Total, amount: usize) {
    let _ = spend(total, amount);
}

/// Records that the render went over `limit`, and returns the error that ends it (naming the
/// first limit passed, if another was).
fn over(limit: Limit) -> Error {
    let first = BUDGET.with_borrow_mut(|budget| *budget.exceeded.get_or_insert(limit));
    Error::with_msg(first.message())
}

/// The size of a value: its text (strings, keys, other scalars as rendered) and its items (array
/// items and object entries), at any depth.
#[derive(Clone, Copy, Debug, Default)]
struct Footprint {
    bytes: usize,
    items: usize,
}

/// The most a single value may hold.
const VALUE_LIMIT: Footprint = Footprint { bytes: MAX_VALUE_BYTES, items: MAX_VALUE_ITEMS };
/// Past this, a value is over every running total: measuring stops there.
const TOTAL_LIMIT: Footprint = Footprint { bytes: MAX_PROCESSED_BYTES, items: MAX_PROCESSED_BYTES / ITEM_BYTES };

impl Footprint {
    /// Measures `value`, stopping once past `limit` (so that measuring costs no more than that).
    fn measure(value: &dyn ValueView, limit: Footprint) -> Footprint {
        let mut footprint = Footprint::default();
        footprint.add(value, limit);
        footprint
    }

    fn add(&mut self, value: &dyn ValueView, limit: Footprint) {
        if let Some(scalar) = value.as_scalar() {
            self.bytes = self.bytes.saturating_add(scalar.to_kstr().len());
        } else if let Some(array) = value.as_array() {
            for item in array.values() {
                if self.exceeds(limit) {
                    return;
                }
                self.items += 1;
                self.add(item, limit);
            }
        } else if let Some(object) = value.as_object() {
            for (key, item) in object.iter() {
                if self.exceeds(limit) {
                    return;
                }
                self.items += 1;
                self.bytes = self.bytes.saturating_add(key.len());
                self.add(item, limit);
            }
        }
    }

    fn exceeds(self, limit: Footprint) -> bool {
        self.bytes > limit.bytes || self.items > limit.items
    }

    /// What the value counts for in the running totals.
    fn cost(self) -> usize {
        self.bytes.saturating_add(self.items.saturating_mul(ITEM_BYTES))
    }
}

/// Checks a value that a filter made against the per-value limits, and counts it.
fn made(value: &dyn ValueView) -> Result<(), Error> {
    let footprint = Footprint::measure(value, VALUE_LIMIT);
    if footprint.bytes > MAX_VALUE_BYTES {
        return Err(over(Limit::ValueBytes));
    }
    if footprint.items > MAX_VALUE_ITEMS {
        return Err(over(Limit::ValueItems));
    }
    spend(Total::Processed, footprint.cost())
}

/// What a looked-up value, or a stored variable, counts for.
fn total_cost(value: &dyn ValueView) -> usize {
    Footprint::measure(value, TOTAL_LIMIT).cost()
}

/// The root scope of a render: the context, and the variables that `assign` and `capture` set.
/// Every lookup is counted (a lookup copies its value), and so is what the variables keep. Every
/// scope a template sees is this one or a [`LoopScope`] on top of it, which counts its own.
struct Metered<R>(R);

impl<R: Runtime> Runtime for Metered<R> {
    fn partials(&self) -> &dyn PartialStore {
        self.0.partials()
    }

    fn name(&self) -> Option<KStringRef<'_>> {
        self.0.name()
    }

    fn roots(&self) -> BTreeSet<KStringCow<'_>> {
        self.0.roots()
    }

    fn try_get(&self, path: &[ScalarCow<'_>]) -> Option<ValueCow<'_>> {
        let value = self.0.try_get(path)?;
        record(Total::Processed, total_cost(value.as_view()));
        Some(value)
    }

    fn get(&self, path: &[ScalarCow<'_>]) -> Result<ValueCow<'_>, Error> {
        let value = self.0.get(path)?;
        spend(Total::Processed, total_cost(value.as_view()))?;
        Ok(value)
    }

    fn set_global(&self, name: KString, value: Value) -> Option<Value> {
        let kept = total_cost(&value);
        let replaced = self.0.set_global(name, value);
        let released = replaced.as_ref().map_or(0, |old| total_cost(old));
        BUDGET.with_borrow_mut(|budget| budget.variables = budget.variables.saturating_sub(released));
        record(Total::Variables, kept);
        replaced
    }

    fn set_index(&self, name: KString, value: Value) -> Option<Value> {
        self.0.set_index(name, value)
    }

    fn get_index<'a>(&'a self, name: &str) -> Option<ValueCow<'a>> {
        self.0.get_index(name)
    }

    fn registers(&self) -> &Registers {
        self.0.registers()
    }
}

/// The scope of one loop iteration (its item and `forloop`) on top of the enclosing one, with
/// lookups of its variables counted (those of the enclosing scope are counted there).
struct LoopScope<'s> {
    parent: &'s dyn Runtime,
    variables: HashMap<KStringRef<'s>, &'s dyn ValueView>,
}

impl LoopScope<'_> {
    fn holds(&self, path: &[ScalarCow<'_>]) -> bool {
        path.first().is_some_and(|key| ObjectView::contains_key(&self.variables, key.to_kstr().as_str()))
    }
}

impl Runtime for LoopScope<'_> {
    fn partials(&self) -> &dyn PartialStore {
        self.parent.partials()
    }

    fn name(&self) -> Option<KStringRef<'_>> {
        self.parent.name()
    }

    fn roots(&self) -> BTreeSet<KStringCow<'_>> {
        let mut roots = self.parent.roots();
        roots.extend(ObjectView::keys(&self.variables));
        roots
    }

    fn try_get(&self, path: &[ScalarCow<'_>]) -> Option<ValueCow<'_>> {
        if !self.holds(path) {
            return self.parent.try_get(path);
        }
        let value = liquid::model::try_find(self.variables.as_value(), path)?;
        record(Total::Processed, total_cost(value.as_view()));
        Some(value)
    }

    fn get(&self, path: &[ScalarCow<'_>]) -> Result<ValueCow<'_>, Error> {
        if !self.holds(path) {
            return self.parent.get(path);
        }
        let value = liquid::model::find(self.variables.as_value(), path)?;
        spend(Total::Processed, total_cost(value.as_view()))?;
        Ok(value)
    }

    fn set_global(&self, name: KString, value: Value) -> Option<Value> {
        self.parent.set_global(name, value)
    }

    fn set_index(&self, name: KString, value: Value) -> Option<Value> {
        self.parent.set_index(name, value)
    }

    fn get_index<'a>(&'a self, name: &str) -> Option<ValueCow<'a>> {
        self.parent.get_index(name)
    }

    fn registers(&self) -> &Registers {
        self.parent.registers()
    }
}

/// `for`, in place of the standard one (same syntax: `limit:`, `offset:`, `reversed`, `else`,
/// `forloop`, `break`, `continue`): it goes through its range without copying it first, counts
/// each iteration and its steps, and gives the body a [`LoopScope`].
#[derive(Clone, Copy, Debug)]
struct ForBlock;

impl BlockReflection for ForBlock {
    fn start_tag(&self) -> &str {
        "for"
    }

    fn end_tag(&self) -> &str {
        "endfor"
    }

    fn description(&self) -> &str {
        "Loops over an array, an object's entries or a range, within the render's budget."
    }
}

impl ParseBlock for ForBlock {
    fn parse(
        &self,
        mut arguments: TagTokenIter<'_>,
        mut tokens: TagBlock<'_, '_>,
        options: &Language,
    ) -> Result<Box<dyn Renderable>, Error> {
        let variable = arguments.expect_next("Identifier expected.")?.expect_identifier().into_result()?;
        arguments.expect_next("\"in\" expected.")?.expect_str("in").into_result_custom_msg("\"in\" expected.")?;
        let range = match arguments.expect_next("Array or range expected.")?.expect_value() {
            TryMatchToken::Matches(array) => RangeExpression::Array(array),
            TryMatchToken::Fails(range) => match range.expect_range() {
                TryMatchToken::Matches((start, stop)) => RangeExpression::Counted(start, stop),
                TryMatchToken::Fails(range) => return range.raise_error().into_err(),
            },
        };
        let (mut limit, mut offset, mut reversed) = (None, None, false);
        while let Some(token) = arguments.next() {
            match token.as_str() {
                "limit" => limit = Some(attribute(&mut arguments)?),
                "offset" => offset = Some(attribute(&mut arguments)?),
                "reversed" => reversed = true,
                _ => return token.raise_custom_error("\"limit\", \"offset\" or \"reversed\" expected.").into_err(),
            }
        }
        arguments.expect_nothing()?;

        let mut body = Vec::new();
        let mut extent = Extent::default();
        let mut otherwise = None;
        while let Some(element) = tokens.next()? {
            match element {
                BlockElement::Tag(mut tag) if tag.name() == "else" => {
                    extent.end_before(tag.as_str());
                    tag.tokens().expect_nothing()?;
                    otherwise = Some(Template::new(tokens.parse_all(options)?));
                    break;
                }
                element => {
                    extent.include(&element, options);
                    body.push(element.parse(&mut tokens, options)?);
                }
            }
        }
        Ok(Box::new(For {
            variable: KString::from_ref(variable),
            range,
            limit,
            offset,
            reversed,
            body: Template::new(body),
            body_steps: extent.steps(),
            otherwise,
        }))
    }

    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

/// `limit: n` or `offset: n` after its name.
fn attribute(arguments: &mut TagTokenIter<'_>) -> Result<Expression, Error> {
    arguments.expect_next("\":\" expected.")?.expect_str(":").into_result_custom_msg("\":\" expected.")?;
    arguments.expect_next("Value expected.")?.expect_value().into_result()
}

/// Where a loop body lies in the template, from the elements directly in it (their text is a
/// slice of the template), to weigh an iteration.
#[derive(Default)]
struct Extent {
    /// Where the first element starts.
    start: Option<usize>,
    /// Where the last element ends; `None` if it is a block, whose text here is only its
    /// opening tag (the end of a block before the last is where the next element starts).
    end: Option<usize>,
}

impl Extent {
    fn include(&mut self, element: &BlockElement<'_>, options: &Language) {
        let text = element.as_str();
        let at = text.as_ptr() as usize;
        self.start.get_or_insert(at);
        let block = matches!(element, BlockElement::Tag(tag) if options.blocks.get(tag.name()).is_some());
        self.end = (!block).then(|| at + text.len());
    }

    /// The body ends before `text` (`{% else %}`).
    fn end_before(&mut self, text: &str) {
        self.end = Some(text.as_ptr() as usize);
    }

    /// The steps an iteration takes: the bytes of the tags and outputs in the body (its plain
    /// text is bounded by the output limit), up to the end of the template if the body ends with
    /// a block (where that ends is not known here).
    fn steps(&self) -> usize {
        let Some(start) = self.start else { return 1 };
        PARSING.with_borrow(|markup| markup.bytes_between(start, self.end)).max(1)
    }
}

#[derive(Debug)]
struct For {
    variable: KString,
    range: RangeExpression,
    limit: Option<Expression>,
    offset: Option<Expression>,
    reversed: bool,
    body: Template,
    /// See [`Extent::steps`].
    body_steps: usize,
    otherwise: Option<Template>,
}

impl Renderable for For {
    fn render_to(&self, writer: &mut dyn Write, runtime: &dyn Runtime) -> Result<(), Error> {
        let range = self
            .range
            .evaluate(runtime)
            .trace_with(|| format!("{{% for {} in {} %}}", self.variable, self.range).into())?;
        let items = Items::of(&range)?;
        let offset = whole_number(self.offset.as_ref(), runtime)?.unwrap_or(0);
        let limit = whole_number(self.limit.as_ref(), runtime)?;
        let start = offset.min(items.len());
        let end = limit.map_or(items.len(), |limit| start.saturating_add(limit).min(items.len()));
        if start == end {
            return self.otherwise.as_ref().map_or(Ok(()), |otherwise| otherwise.render_to(writer, runtime));
        }
        let parentloop = runtime.try_get(&[ScalarCow::new("forloop")]);
        let length = end - start;
        for i in 0..length {
            spend(Total::Iterations, 1)?;
            spend(Total::Steps, self.body_steps)?;
            let item = items.get(if self.reversed { end - 1 - i } else { start + i });
            let forloop = Forloop::new(i, length, parentloop.as_ref().map(ValueCow::as_view));
            let variables = HashMap::from([
                (KStringRef::from("forloop"), &forloop as &dyn ValueView),
                (self.variable.as_ref(), item.as_view()),
            ]);
            let scope = LoopScope { parent: runtime, variables };
            self.body.render_to(writer, &scope)?;
            let interrupt = scope.registers().get_mut::<InterruptRegister>().reset();
            if interrupt == Some(Interrupt::Break) {
                break;
            }
        }
        Ok(())
    }
}

/// The value of `limit:` or `offset:`: a whole number, a negative one counting as 0.
fn whole_number(expression: Option<&Expression>, runtime: &dyn Runtime) -> Result<Option<usize>, Error> {
    let Some(expression) = expression else { return Ok(None) };
    let value = expression.evaluate(runtime)?;
    match value.as_scalar().and_then(|scalar| scalar.to_integer()) {
        Some(number) => Ok(Some(usize::try_from(number).unwrap_or(0))),
        None => Err(Error::with_msg(format!("Expected whole number, found `{}`", value.type_name()))),
    }
}

/// What a loop goes through, one item at a time.
enum Items<'r> {
    /// `(start..stop)`: `len` numbers from `start`.
    Numbers {
        start: i64,
        len: usize,
    },
    Array(&'r dyn ArrayView),
    /// An object's entries, each given as a `[key, value]` pair.
    Entries(Vec<(KStringCow<'r>, &'r dyn ValueView)>),
}

impl<'r> Items<'r> {
    fn of(range: &'r Range<'_>) -> Result<Items<'r>, Error> {
        match range {
            Range::Counted(start, stop) => {
                let len = usize::try_from(i128::from(*stop) - i128::from(*start) + 1).unwrap_or(0);
                Ok(Items::Numbers { start: *start, len })
            }
            Range::Array(value) => {
                let value = value.as_view();
                if let Some(array) = value.as_array() {
                    Ok(Items::Array(array))
                } else if let Some(object) = value.as_object() {
                    Ok(Items::Entries(object.iter().collect()))
                } else if value.is_nil() || value.is_state() {
                    Ok(Items::Entries(Vec::new()))
                } else {
                    Err(Error::with_msg(format!("Expected array, found `{}`", value.type_name())))
                }
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Items::Numbers { len, .. } => *len,
            Items::Array(array) => usize::try_from(array.size()).unwrap_or(0),
            Items::Entries(entries) => entries.len(),
        }
    }

    fn get(&self, index: usize) -> ValueCow<'r> {
        match self {
            Items::Numbers { start, .. } => {
                ValueCow::Owned(Value::scalar(start.saturating_add(i64::try_from(index).unwrap_or(i64::MAX))))
            }
            Items::Array(array) => {
                let array: &'r dyn ArrayView = *array;
                let item = i64::try_from(index).ok().and_then(|index| array.get(index));
                item.map_or(ValueCow::Owned(Value::Nil), ValueCow::Borrowed)
            }
            Items::Entries(entries) => ValueCow::Owned(entries.get(index).map_or(Value::Nil, |(key, value)| {
                Value::Array(vec![Value::scalar(key.clone().into_owned()), value.to_value()])
            })),
        }
    }
}

/// `forloop` in a loop body.
#[derive(Debug, liquid::ValueView, liquid::ObjectView)]
struct Forloop<'p> {
    length: i64,
    parentloop: Option<&'p dyn ValueView>,
    index0: i64,
    index: i64,
    rindex0: i64,
    rindex: i64,
    first: bool,
    last: bool,
}

impl<'p> Forloop<'p> {
    fn new(i: usize, length: usize, parentloop: Option<&'p dyn ValueView>) -> Self {
        let (i, length) = (i64::try_from(i).unwrap_or(i64::MAX), i64::try_from(length).unwrap_or(i64::MAX));
        Forloop {
            length,
            parentloop,
            index0: i,
            index: i + 1,
            rindex0: length - i - 1,
            rindex: length - i,
            first: i == 0,
            last: i == length - 1,
        }
    }
}

/// `capture`, in place of the standard one: the text goes to a buffer that stops at the
/// per-value limit, where the standard one grows without bound.
#[derive(Clone, Copy, Debug)]
struct CaptureBlock;

impl BlockReflection for CaptureBlock {
    fn start_tag(&self) -> &str {
        "capture"
    }

    fn end_tag(&self) -> &str {
        "endcapture"
    }

    fn description(&self) -> &str {
        "Sets a variable to the text that its body renders, within the per-value limit."
    }
}

impl ParseBlock for CaptureBlock {
    fn parse(
        &self,
        mut arguments: TagTokenIter<'_>,
        mut tokens: TagBlock<'_, '_>,
        options: &Language,
    ) -> Result<Box<dyn Renderable>, Error> {
        let variable = arguments.expect_next("Identifier expected")?.expect_identifier().into_result()?;
        arguments.expect_nothing()?;
        let body = Template::new(tokens.parse_all(options)?);
        Ok(Box::new(Capture { variable: KString::from_ref(variable), body }))
    }

    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

#[derive(Debug)]
struct Capture {
    variable: KString,
    body: Template,
}

impl Renderable for Capture {
    fn render_to(&self, _writer: &mut dyn Write, runtime: &dyn Runtime) -> Result<(), Error> {
        let mut captured = Bounded::new(MAX_VALUE_BYTES, Limit::ValueBytes);
        self.body.render_to(&mut captured, runtime)?;
        spend(Total::Processed, captured.bytes.len())?;
        let text = String::from_utf8(captured.bytes).map_err(|e| Error::with_msg(e.to_string()))?;
        runtime.set_global(self.variable.clone(), Value::scalar(text));
        Ok(())
    }
}

/// A standard filter, measured: what it makes is checked against the per-value limits and
/// counted, and what it is given is checked first if it can make far more than that.
#[derive(Clone)]
struct Measured<P> {
    filter: P,
    precheck: Precheck,
}

fn measured<P: ParseFilter + Clone + 'static>(filter: P, precheck: Precheck) -> Box<dyn ParseFilter> {
    Box::new(Measured { filter, precheck })
}

/// What is checked before a filter runs.
#[derive(Clone, Copy, Debug)]
enum Precheck {
    /// Nothing: what the filter makes is at most a few times what it is given.
    None,
    /// `date`: the length that the format can make, padding widths included.
    Date,
    /// `join`: the items' text, and the separator between each two.
    Join,
    /// `replace`: the length once every match is replaced.
    Replace,
    /// `split`: the number of pieces.
    Split,
    /// `sort`, `sort_natural`: n·log2(n) comparisons, counted as steps.
    Sort,
    /// `uniq`: n·(n-1)/2 comparisons, counted as steps.
    Uniq,
}

impl<P: ParseFilter + Clone + 'static> ParseFilter for Measured<P> {
    fn parse(&self, arguments: FilterArguments<'_>) -> Result<Box<dyn Filter>, Error> {
        let positional: Vec<Expression> = arguments.positional.collect();
        let filter = self.filter.parse(FilterArguments {
            positional: Box::new(positional.clone().into_iter()),
            keyword: arguments.keyword,
        })?;
        Ok(Box::new(MeasuredFilter { filter, arguments: positional, precheck: self.precheck }))
    }

    fn reflection(&self) -> &dyn FilterReflection {
        self.filter.reflection()
    }
}

#[derive(Debug)]
struct MeasuredFilter {
    filter: Box<dyn Filter>,
    arguments: Vec<Expression>,
    precheck: Precheck,
}

impl fmt::Display for MeasuredFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.filter, f)
    }
}

impl Filter for MeasuredFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<Value, Error> {
        self.precheck(input, runtime)?;
        // Some standard filters panic on some input (`divided_by` and `modulo` on the smallest
        // integer and -1; arithmetic overflow in a debug build): that fails the render, not the worker.
        let evaluated = panic::catch_unwind(AssertUnwindSafe(|| self.filter.evaluate(input, runtime)));
        let value =
            evaluated.map_err(|_| Error::with_msg(format!("filter `{}` failed on its input", self.filter)))??;
        made(&value)?;
        Ok(value)
    }
}

impl MeasuredFilter {
    fn precheck(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<(), Error> {
        let items = || input.as_array().map_or(0, |array| usize::try_from(array.size()).unwrap_or(0));
        match self.precheck {
            Precheck::None => Ok(()),
            Precheck::Date => fits(date_bound(&self.text(0, runtime)?.unwrap_or_default())),
            Precheck::Join => {
                let Some(array) = input.as_array() else { return Ok(()) };
                let separator = self.text(0, runtime)?.unwrap_or_else(|| " ".to_owned());
                let mut length = separator.len().saturating_mul(items().saturating_sub(1));
                for item in array.values() {
                    if length > MAX_VALUE_BYTES {
                        break;
                    }
                    length = length.saturating_add(item.to_kstr().len());
                }
                fits(length)
            }
            Precheck::Replace => {
                let text = input.to_kstr();
                let search = self.text(0, runtime)?.unwrap_or_default();
                let replacement = self.text(1, runtime)?.unwrap_or_default();
                let matches = text.matches(search.as_str()).count();
                let kept = text.len().saturating_sub(matches.saturating_mul(search.len()));
                fits(kept.saturating_add(matches.saturating_mul(replacement.len())))
            }
            Precheck::Split => {
                let text = input.to_kstr();
                let pattern = self.text(0, runtime)?.unwrap_or_default();
                let pieces =
                    if text.is_empty() { 0 } else { text.matches(pattern.as_str()).take(MAX_VALUE_ITEMS).count() + 1 };
                if pieces > MAX_VALUE_ITEMS {
                    return Err(over(Limit::ValueItems));
                }
                Ok(())
            }
            Precheck::Sort => {
                let n = items();
                spend(Total::Steps, n.saturating_mul((usize::BITS - n.leading_zeros()) as usize))
            }
            Precheck::Uniq => {
                let n = items();
                spend(Total::Steps, n.saturating_mul(n.saturating_sub(1)) / 2)
            }
        }
    }

    /// The text of positional argument `index`, if given.
    fn text(&self, index: usize, runtime: &dyn Runtime) -> Result<Option<String>, Error> {
        self.arguments.get(index).map(|argument| Ok(argument.evaluate(runtime)?.to_kstr().into_string())).transpose()
    }
}

/// Fails if a string of `length` bytes would be over the per-value limit.
fn fits(length: usize) -> Result<(), Error> {
    if length > MAX_VALUE_BYTES {
        return Err(over(Limit::ValueBytes));
    }
    Ok(())
}

/// The most that a `date` format can make: [`DATE_BYTES_PER_FORMAT_BYTE`] per byte of it, and the
/// padding width of each directive (`%010d`: the digits after `%` and its flags).
fn date_bound(format: &str) -> usize {
    let mut bound = format.len().saturating_mul(DATE_BYTES_PER_FORMAT_BYTE);
    let mut rest = format;
    while let Some(percent) = rest.find('%') {
        let directive = rest[percent + 1..].trim_start_matches(['-', '_', '0', '^', '#', ':']);
        let digits = directive.len() - directive.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            bound = bound.saturating_add(directive[..digits].parse().unwrap_or(usize::MAX));
        }
        rest = &directive[digits..];
    }
    bound
}

/// A buffer that refuses to grow past `limit` bytes: the write fails, and the render is over `over`.
struct Bounded {
    bytes: Vec<u8>,
    limit: usize,
    over: Limit,
}

impl Bounded {
    fn new(limit: usize, over: Limit) -> Self {
        Bounded { bytes: Vec::new(), limit, over }
    }
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > self.limit {
            return Err(io::Error::other(over(self.over).to_string()));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A render context: JSON turned into Liquid values, where any unknown key is [`Missing`].
#[derive(Debug)]
pub enum Context {
    Scalar(Value),
    Array(Vec<Context>),
    Object(BTreeMap<String, Context>),
}

/// What an unknown variable evaluates to: renders empty, is falsy, and takes `default`.
#[derive(Debug)]
pub struct Missing;

static MISSING: Missing = Missing;

impl Context {
    pub fn from_json(value: &serde_json::Value) -> Context {
        match value {
            serde_json::Value::Null => Context::Scalar(Value::Nil),
            serde_json::Value::Bool(b) => Context::Scalar(Value::scalar(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Context::Scalar(Value::scalar(i)),
                None => Context::Scalar(Value::scalar(n.as_f64().unwrap_or(0.0))),
            },
            serde_json::Value::String(s) => Context::Scalar(Value::scalar(s.clone())),
            serde_json::Value::Array(items) => Context::Array(items.iter().map(Context::from_json).collect()),
            serde_json::Value::Object(map) => {
                Context::Object(map.iter().map(|(k, v)| (k.clone(), Context::from_json(v))).collect())
            }
        }
    }

    /// The top-level context `{profile, event, payload, message}` as an object.
    pub fn object(entries: Vec<(&str, Context)>) -> Context {
        Context::Object(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
}

impl ValueView for Context {
    fn as_debug(&self) -> &dyn fmt::Debug {
        self
    }
    fn render(&self) -> DisplayCow<'_> {
        match self {
            Context::Scalar(v) => v.render(),
            _ => DisplayCow::Owned(Box::new(self.to_value().render().to_string())),
        }
    }
    fn source(&self) -> DisplayCow<'_> {
        match self {
            Context::Scalar(v) => v.source(),
            _ => DisplayCow::Owned(Box::new(self.to_value().source().to_string())),
        }
    }
    fn type_name(&self) -> &'static str {
        match self {
            Context::Scalar(v) => v.type_name(),
            Context::Array(_) => "array",
            Context::Object(_) => "object",
        }
    }
    fn query_state(&self, state: State) -> bool {
        match self {
            Context::Scalar(v) => v.query_state(state),
            Context::Array(items) => matches!(state, State::Truthy) != items.is_empty(),
            Context::Object(map) => matches!(state, State::Truthy) != map.is_empty(),
        }
    }
    fn to_kstr(&self) -> KStringCow<'_> {
        match self {
            Context::Scalar(v) => v.to_kstr(),
            _ => KStringCow::from_string(self.render().to_string()),
        }
    }
    fn to_value(&self) -> Value {
        match self {
            Context::Scalar(v) => v.clone(),
            Context::Array(items) => Value::Array(items.iter().map(ValueView::to_value).collect()),
            Context::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone().into(), v.to_value())).collect()),
        }
    }
    fn as_scalar(&self) -> Option<liquid::model::ScalarCow<'_>> {
        match self {
            Context::Scalar(v) => v.as_scalar(),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<&dyn ArrayView> {
        matches!(self, Context::Array(_)).then_some(self as &dyn ArrayView)
    }
    fn as_object(&self) -> Option<&dyn ObjectView> {
        matches!(self, Context::Object(_)).then_some(self as &dyn ObjectView)
    }
    fn is_nil(&self) -> bool {
        matches!(self, Context::Scalar(Value::Nil))
    }
}

impl ArrayView for Context {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        match self {
            Context::Array(items) => items.len() as i64,
            _ => 0,
        }
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        match self {
            Context::Array(items) => Box::new(items.iter().map(|v| v as &dyn ValueView)),
            _ => Box::new(std::iter::empty()),
        }
    }
    fn contains_key(&self, index: i64) -> bool {
        ArrayView::get(self, index).is_some()
    }
    fn get(&self, index: i64) -> Option<&dyn ValueView> {
        let Context::Array(items) = self else { return None };
        let i = if index < 0 { items.len() as i64 + index } else { index };
        usize::try_from(i).ok().and_then(|i| <[Context]>::get(items, i)).map(|v| v as &dyn ValueView)
    }
}

impl ObjectView for Context {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        match self {
            Context::Object(map) => map.len() as i64,
            _ => 0,
        }
    }
    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
        match self {
            Context::Object(map) => Box::new(map.keys().map(|k| KStringCow::from_ref(k.as_str()))),
            _ => Box::new(std::iter::empty()),
        }
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        match self {
            Context::Object(map) => Box::new(map.values().map(|v| v as &dyn ValueView)),
            _ => Box::new(std::iter::empty()),
        }
    }
    fn iter<'k>(&'k self) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
        match self {
            Context::Object(map) => {
                Box::new(map.iter().map(|(k, v)| (KStringCow::from_ref(k.as_str()), v as &dyn ValueView)))
            }
            _ => Box::new(std::iter::empty()),
        }
    }
    /// Lenient: every key "exists" (unknown ones are Missing), so lookups never fail.
    fn contains_key(&self, _index: &str) -> bool {
        true
    }
    fn get<'s>(&'s self, index: &str) -> Option<&'s dyn ValueView> {
        match self {
            Context::Object(map) => Some(map.get(index).map_or(&MISSING as &dyn ValueView, |v| v as &dyn ValueView)),
            _ => Some(&MISSING),
        }
    }
}

impl ValueView for Missing {
    fn as_debug(&self) -> &dyn fmt::Debug {
        self
    }
    fn render(&self) -> DisplayCow<'_> {
        DisplayCow::Borrowed(&"")
    }
    fn source(&self) -> DisplayCow<'_> {
        DisplayCow::Borrowed(&"nil")
    }
    fn type_name(&self) -> &'static str {
        "nil"
    }
    fn query_state(&self, state: State) -> bool {
        !matches!(state, State::Truthy)
    }
    fn to_kstr(&self) -> KStringCow<'_> {
        KStringCow::from_static("")
    }
    fn to_value(&self) -> Value {
        Value::Nil
    }
    fn as_object(&self) -> Option<&dyn ObjectView> {
        Some(self)
    }
    fn is_nil(&self) -> bool {
        true
    }
}

impl ObjectView for Missing {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        0
    }
    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
        Box::new(std::iter::empty())
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        Box::new(std::iter::empty())
    }
    fn iter<'k>(&'k self) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
        Box::new(std::iter::empty())
    }
    fn contains_key(&self, _index: &str) -> bool {
        true
    }
    fn get<'s>(&'s self, _index: &str) -> Option<&'s dyn ValueView> {
        Some(&MISSING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    fn ctx() -> Context {
        Context::object(vec![
            ("profile", Context::from_json(&json!({"first_name": "Ada", "tags": ["a", "b"]}))),
            ("event", Context::from_json(&json!({"name": "cart_updated", "properties": {"cart": {"value": 180}}}))),
            ("payload", Context::from_json(&json!({"coupon": "SAVE10"}))),
        ])
    }

    #[test]
    fn renders_profile_event_and_payload() {
        let out = render(
            "Hi {{ profile.first_name }}, your cart of {{ event.properties.cart.value }} - use {{ payload.coupon }}",
            &ctx(),
        );
        assert_eq!(out.unwrap(), "Hi Ada, your cart of 180 - use SAVE10");
        assert_eq!(render("{% for t in profile.tags %}[{{ t }}]{% endfor %}", &ctx()).unwrap(), "[a][b]");
    }

    #[test]
    fn missing_variables_are_empty_or_default() {
        assert_eq!(render("Hi {{ profile.last_name }}!", &ctx()).unwrap(), "Hi !");
        assert_eq!(render("{{ profile.address.city | default: \"there\" }}", &ctx()).unwrap(), "there");
        assert_eq!(render("{{ nothing.at.all }}", &ctx()).unwrap(), "");
        assert_eq!(render("{% if profile.vip %}vip{% else %}std{% endif %}", &ctx()).unwrap(), "std");
    }

    #[test]
    fn bad_or_unbounded_templates_are_rejected() {
        assert!(validate("{% if %}").is_err());
        assert!(validate("{{ x ").is_err());
        assert!(validate("{% for i in (1..100000000) %}x{% endfor %}").unwrap_err().contains("longer"));
        assert!(validate("{% for i in (1..event.n) %}x{% endfor %}").unwrap_err().contains("literal"));
        assert!(validate("{% for i in (1..10) %}{{ i }}{% endfor %}").is_ok());
        let huge = "{% for i in (1..1000) %}{% for j in (1..1000) %}xxxxxxxxxx{% endfor %}{% endfor %}";
        let err = render(huge, &ctx()).unwrap_err();
        assert!(err.contains("exceeds"), "{err}");
    }
    /// A context with large arrays, as an event could carry.
    fn large() -> Context {
        Context::object(vec![(
            "payload",
            Context::from_json(&json!({
                "items": (0..1000).collect::<Vec<_>>(),
                "many": (0..10_000).rev().collect::<Vec<_>>(),
            })),
        )])
    }

    /// Renders a hostile template: it must fail with `expected` in the error, and fail fast.
    fn refused(template: &str, context: &Context, expected: &str) {
        let started = Instant::now();
        let result = render(template, context);
        let took = started.elapsed();
        let shown: String = template.chars().take(160).collect();
        let err = result.expect_err(&shown);
        assert!(err.contains(expected), "{shown}\n  failed with: {err}\n  expected: {expected}");
        assert!(took < Duration::from_secs(2), "{shown}\n  took {took:?}");
    }

    /// `s` doubled `n` times from "x": 2^n bytes.
    fn doubled(n: u32) -> String {
        format!("{{% assign s = \"x\" %}}{{% for i in (1..{n}) %}}{{% assign s = s | append: s %}}{{% endfor %}}")
    }

    #[test]
    fn growing_strings_hit_the_value_limit() {
        let value = "a template value exceeds 262144 bytes";
        for (step, expected) in [
            ("{% assign s = s | append: s %}", value),
            ("{% assign s = s | prepend: s %}", value),
            ("{% assign s = s | replace: \"x\", \"xx\" %}", value),
            ("{% assign s = s | append: \"x\" | replace_first: \"x\", s %}", value),
            ("{% capture s %}{{ s }}{{ s }}{% endcapture %}", value),
            ("{% assign s = s | split: \"\" | join: s %}", "a template value exceeds 10000 items"),
        ] {
            let template =
                format!("{{% assign s = \"x\" %}}{{% for i in (1..40) %}}{step}{{% endfor %}}{{{{ s | size }}}}");
            refused(&template, &ctx(), expected);
        }
        // One filter that would multiply its input: refused before it allocates.
        refused(&format!("{}{{{{ s | replace: \"\", s }}}}", doubled(16)), &ctx(), value);
        refused("{{ \"2024-01-01\" | date: \"%999999999999Y\" }}", &ctx(), value);
        refused("{{ \"2024-01-01\" | date: \"%300000N\" }}", &ctx(), value);
    }

    #[test]
    fn growing_arrays_hit_the_item_limit() {
        let items = "a template value exceeds 10000 items";
        let concat =
            "{% assign a = \"x,y\" | split: \",\" %}{% for i in (1..40) %}{% assign a = a | concat: a %}{% endfor %}";
        refused(concat, &ctx(), items);
        refused(&format!("{}{{% assign a = s | split: \"\" %}}", doubled(16)), &ctx(), items);
    }

    #[test]
    fn nested_loops_hit_the_iteration_limit() {
        let iterations = "template rendering exceeded 100000 loop iterations";
        let triple = "{% for a in (1..1000) %}{% for b in (1..1000) %}{% for c in (1..1000) %}{% endfor %}{% endfor %}{% endfor %}";
        refused(triple, &ctx(), iterations);
        let context_arrays = "{% for a in payload.items %}{% for b in payload.items %}{% endfor %}{% endfor %}";
        refused(context_arrays, &large(), iterations);
    }

    #[test]
    fn large_loop_bodies_hit_the_step_limit() {
        let steps = "template rendering exceeded 1000000 steps";
        let conditions = "{% if 1 == 2 %}{% endif %}".repeat(400);
        let nested = format!("{{% for a in (1..1000) %}}{{% for b in (1..100) %}}{{% if true %}}{conditions}{{% endif %}}{{% endfor %}}{{% endfor %}}");
        refused(&nested, &ctx(), steps);
        let lookups = "{{ nothing }}".repeat(2000);
        refused(
            &format!("{{% for a in (1..1000) %}}{{% for b in (1..100) %}}{lookups}{{% endfor %}}{{% endfor %}}"),
            &ctx(),
            steps,
        );
        refused("{% assign u = payload.many | uniq %}", &large(), steps);
    }

    #[test]
    fn values_looked_up_stored_or_filtered_are_bounded_in_all() {
        let variables =
            format!("{}{}", doubled(18), (0..40).map(|i| format!("{{% assign v{i} = s %}}")).collect::<String>());
        refused(&variables, &ctx(), "template variables exceed 8388608 bytes in all");
        let processed = "template rendering exceeded 33554432 bytes of values";
        refused(
            &format!("{}{{% for i in (1..1000) %}}{{% if s == s %}}{{% endif %}}{{% endfor %}}", doubled(18)),
            &ctx(),
            processed,
        );
        refused("{% for i in (1..1000) %}{% assign s = payload.many | sort %}{% endfor %}", &large(), "exceeded");
    }

    #[test]
    fn deep_nesting_is_rejected_before_parsing() {
        // Each of these overflowed an 8 MiB stack (aborting the process) before the limits.
        let deep_ifs = format!("{}{}", "{%if 1%}".repeat(3000), "{%endif%}".repeat(3000));
        assert!(validate(&deep_ifs).unwrap_err().contains("blocks are nested more than 50 deep"));
        let deep_index = format!("{{{{ a{}{} }}}}", "[a".repeat(11_000), "]".repeat(11_000));
        assert!(validate(&deep_index).unwrap_err().contains("indexes are nested more than 50 deep"));
        let long_condition = format!("{{% if {} %}}x{{% endif %}}", ["a"; 12_990].join(" or "));
        assert!(validate(&long_condition).unwrap_err().contains("more than 50 \"and\" and \"or\""));
        let unspaced = format!("{{% if {} %}}x{{% endif %}}", ["\"a\""; 10_000].join("or"));
        assert!(validate(&unspaced).unwrap_err().contains("more than 50 \"and\" and \"or\""));
        // A quoted `}}` or `%}` does not end a tag or an output, so it hides nothing.
        let hidden = format!("{}{}", "{{ \"}}{%\" }}{%-if 1-%}".repeat(1500), "{%-endif-%}".repeat(1500));
        assert!(validate(&hidden).unwrap_err().contains("blocks are nested more than 50 deep"));
        let words = format!("{{% assign s = \"{}\" %}}{{{{ \"[[[[[[\" }}}}", "this or that and more ".repeat(100));
        assert!(validate(&words).is_ok());
        // The checks read a template once: the largest ones are checked in a moment.
        let started = Instant::now();
        for largest in [
            "{{q}}".repeat(13_000),
            "{% assign s = 'a' %}".repeat(3_000),
            format!("{{{{ {} }}}}", "'a' ".repeat(16_000)),
            "{%(".repeat(21_000),
        ] {
            assert!(largest.len() <= MAX_TEMPLATE_BYTES);
            let _ = check_markup(&largest);
        }
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
        let fifty = format!("{}{}", "{% if true %}".repeat(50), "{% endif %}".repeat(50));
        assert_eq!(render(&format!("{fifty}{fifty}{{{{ profile[payload[\"coupon\"]] }}}}"), &ctx()).as_deref(), Ok(""));
        assert!(validate(&format!("{{{{ a{}{} }}}}", "[a".repeat(50), "]".repeat(50))).is_ok());
    }

    #[test]
    fn ordinary_templates_still_render() {
        let thousand = render("{% for i in (1..1000) %}{{ i }},{% endfor %}", &ctx()).unwrap();
        assert!(thousand.starts_with("1,2,3,") && thousand.ends_with(",999,1000,"), "{thousand}");
        let appended =
            "{% assign s = \"\" %}{% for i in (1..100) %}{% assign s = s | append: i %}{% endfor %}{{ s | size }}";
        assert_eq!(render(appended, &ctx()).unwrap(), "192");
        // An email listing 200 products, whose loop ends with a block, before a long footer.
        let items: Vec<_> =
            (0..200).map(|i| json!({"name": format!("Product {i}"), "price": 9.5, "tags": ["new", "sale"]})).collect();
        let cart = Context::object(vec![("event", Context::from_json(&json!({"properties": {"items": items}})))]);
        let email = format!(
            "<table>{{% for item in event.properties.items %}}<tr><td>{{{{ item.name | escape }}}}</td><td>{{{{ item.price | times: 2 }}}}</td>\
             <td>{{% for tag in item.tags %}}{{{{ tag | upcase }}}}{{% unless forloop.last %}}, {{% endunless %}}{{% endfor %}}</td></tr>\
             {{% endfor %}}</table>{}",
            "<p>Static footer text.</p>".repeat(1_000)
        );
        assert!(render(&email, &cart).unwrap().contains("<td>Product 199</td><td>19</td><td>NEW, SALE</td>"));
        for (template, expected) in [
            ("{% for t in profile.tags %}{{ forloop.index }}:{{ t }}{% unless forloop.last %},{% endunless %}{% endfor %}", "1:a,2:b"),
            ("{% for i in (1..10) limit:3 offset:2 %}{{ i }}{% endfor %}", "345"),
            ("{% for i in (1..3) reversed %}{{ i }}{% endfor %}", "321"),
            ("{% for t in profile.tags offset:1 limit:5 %}{{ t }}{% endfor %}", "b"),
            ("{% for x in profile.nothing %}x{% else %}empty{% endfor %}", "empty"),
            ("{% for i in (1..9) %}{% if i == 4 %}{% break %}{% endif %}{% if i == 2 %}{% continue %}{% endif %}{{ i }}{% endfor %}", "13"),
            ("{% for a in (1..2) %}{% for b in (1..2) %}{{ forloop.parentloop.index }}{{ b }} {% endfor %}{% endfor %}", "11 12 21 22 "),
            ("{% for pair in event.properties.cart %}{{ pair[0] }}={{ pair[1] }}{% endfor %}", "value=180"),
            ("{% capture hi %}Hi {{ profile.first_name }}{% endcapture %}{{ hi | upcase }}", "HI ADA"),
            ("{{ \"a,b,c\" | split: \",\" | join: \"-\" }}", "a-b-c"),
            ("{{ \"hello\" | replace: \"l\", \"L\" }} {{ event.name | replace_first: \"_\", \" \" }}", "heLLo cart updated"),
            ("{{ profile.tags | concat: profile.tags | uniq | sort | reverse | join }}", "b a"),
            ("{{ \"2016-06-13 02:30:00 +0300\" | date: \"%Y-%m-%d %5H\" }}", "2016-06-13 00002"),
            ("{% for i in (1..3) %}{% cycle \"a\", \"b\" %}{% increment n %}{% endfor %}", "a0b1a2"),
            ("{{ payload.coupon | prepend: \"code \" | truncate: 8 }}", "code ..."),
        ] {
            assert_eq!(render(template, &ctx()).as_deref(), Ok(expected), "{template}");
        }
    }

    #[test]
    fn a_filter_that_panics_fails_the_render() {
        let err = render("{{ -9223372036854775807 | minus: 1 | divided_by: -1 }}", &ctx()).unwrap_err();
        assert!(err.contains("filter `divided_by : -1` failed on its input"), "{err}");
    }

    #[test]
    fn tags_that_render_unbounded_are_not_in_the_language() {
        for template in [
            "{% tablerow i in (1..3) %}{{ i }}{% endtablerow %}",
            "{% ifchanged %}x{% endifchanged %}",
            "{% include \"other\" %}",
            "{% render \"other\" %}",
        ] {
            let err = validate(template).unwrap_err();
            assert!(err.contains("Unknown tag"), "{template}: {err}");
        }
    }
}
