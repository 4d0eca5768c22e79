//! `minicloud usage`: this month's usage and its estimated cost, as a table (or the
//! billing API's JSON), from `/billing/v1/cost`.

use std::io::Write;

use serde_json::Value;

use crate::user::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsageGroup {
    Service,
    Function,
    Resource,
    Owner,
}

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// One row per meter and this (`function`: per function, functions only).
    #[arg(long = "by", value_enum, default_value_t = UsageGroup::Service)]
    pub by: UsageGroup,
    /// RFC 3339 start (default: the start of this month).
    #[arg(long)]
    pub from: Option<String>,
    /// RFC 3339 end, exclusive (default: now).
    #[arg(long)]
    pub to: Option<String>,
    /// The billing API's answer as it came.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

pub async fn run(args: UsageArgs, mut out: impl Write) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    let mut query = vec![("granularity", "month".to_owned())];
    match args.by {
        UsageGroup::Service => {}
        UsageGroup::Function => {
            query.push(("service", "functions".into()));
            query.push(("group_by", "resource".into()));
        }
        UsageGroup::Resource => query.push(("group_by", "resource".into())),
        UsageGroup::Owner => query.push(("group_by", "owner".into())),
    }
    if let Some(from) = args.from {
        query.push(("from", from));
    }
    if let Some(to) = args.to {
        query.push(("to", to));
    }
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let cost: Value = client.get(&format!("/billing/v1/cost?{query}")).await?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&cost)?)?;
        return Ok(());
    }
    write!(out, "{}", table(&cost, args.by))?;
    Ok(())
}

/// The cost answer as aligned columns: a row per line, the free tier, the total.
fn table(cost: &Value, by: UsageGroup) -> String {
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let grouped = match by {
        UsageGroup::Service => None,
        UsageGroup::Function | UsageGroup::Resource => Some("resource"),
        UsageGroup::Owner => Some("owner"),
    };
    let mut rows: Vec<Vec<String>> = vec![
        ["SERVICE", "METER"]
            .into_iter()
            .chain(grouped.map(|g| {
                if by == UsageGroup::Function {
                    "FUNCTION"
                } else if g == "owner" {
                    "OWNER"
                } else {
                    "RESOURCE"
                }
            }))
            .chain(["QUANTITY", "UNIT", "COST (USD)"])
            .map(str::to_owned)
            .collect(),
    ];
    for line in cost["lines"].as_array().into_iter().flatten() {
        let mut row = vec![text(&line["service"]), text(&line["meter"])];
        if let Some(group) = grouped {
            row.push(text(&line[group]));
        }
        row.extend([
            text(&line["billable"]),
            text(&line["billing_unit"]),
            text(&line["cost"]),
        ]);
        rows.push(row);
    }
    for credit in cost["free_tier"].as_array().into_iter().flatten() {
        let mut row = vec!["free tier".to_owned(), text(&credit["meter"])];
        if grouped.is_some() {
            row.push(String::new());
        }
        row.extend([
            text(&credit["billable"]),
            text(&credit["billing_unit"]),
            text(&credit["cost"]),
        ]);
        rows.push(row);
    }
    let mut total = vec!["TOTAL".to_owned(), String::new()];
    if grouped.is_some() {
        total.push(String::new());
    }
    total.extend([String::new(), String::new(), text(&cost["total"])]);
    rows.push(total);
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_has_a_row_per_line_the_free_tier_and_the_total() {
        let cost = json!({
            "lines": [
                {"service":"functions","meter":"function.requests","resource":"thumb","billable":"5","billing_unit":"request","cost":"0.000001"},
                {"service":"storage","meter":"storage.bytes_out","resource":"photos","billable":"0.5","billing_unit":"GB","cost":"0.045"}
            ],
            "free_tier": [{"meter":"storage.bytes_out","quantity":536870912,"billable":"0.5","billing_unit":"GB","cost":"-0.045"}],
            "total": "0.000001"
        });
        let table = table(&cost, UsageGroup::Resource);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("SERVICE    METER"), "{table}");
        assert!(
            lines[1].contains("thumb") && lines[1].ends_with("0.000001"),
            "{table}"
        );
        assert!(
            lines[3].starts_with("free tier") && lines[3].ends_with("-0.045"),
            "{table}"
        );
        assert!(
            lines[4].starts_with("TOTAL") && lines[4].ends_with("0.000001"),
            "{table}"
        );
    }
}
