//! The dashboard's pages. Each is a shell: navigation, forms and empty regions that the
//! script fills from the JSON API with the operator's tokens, so a page itself holds no data
//! and needs no token. maud escapes every interpolated value; the only value interpolated
//! from a request is the id in a detail page's address.

use maud::{DOCTYPE, Markup, html};

use crate::model::{Mode, Status};

/// What a page needs to know about the service's configuration.
#[derive(Clone, Copy)]
pub struct Shell {
    /// `APP_API_TOKEN` is set: the page asks for it.
    pub api_token: bool,
    /// `APP_ADMIN_TOKEN` is set: actions are offered, and the page asks for it.
    pub admin: bool,
    pub script: &'static str,
    pub stylesheet: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Overview,
    Requests,
    Request,
    Destinations,
}

impl Page {
    fn name(self) -> &'static str {
        match self {
            Page::Overview => "overview",
            Page::Requests => "requests",
            Page::Request => "request",
            Page::Destinations => "destinations",
        }
    }
}

fn layout(shell: Shell, page: Page, title: &str, request_id: Option<&str>, main: Markup) -> Markup {
    let nav = [
        (Page::Overview, "/ui", "Overview"),
        (Page::Requests, "/ui/requests", "Requests"),
        (Page::Destinations, "/ui/destinations", "Destinations"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · syncasync" }
                // No favicon request (a 404 would be a console error).
                link rel="icon" href="data:,";
                link rel="stylesheet" href=(shell.stylesheet);
                script src=(shell.script) defer {}
            }
            body data-page=(page.name())
                data-admin=(if shell.admin { "1" } else { "0" })
                data-api-token=(if shell.api_token { "1" } else { "0" })
                data-request-id=[request_id] {
                a.skip href="#main" { "Skip to content" }
                header {
                    a.brand href="/ui" { "syncasync" }
                    nav aria-label="Dashboard" {
                        @for (target, href, label) in nav {
                            @let current = target == page
                                || (target == Page::Requests && page == Page::Request);
                            a href=(href) aria-current=[current.then_some("page")] { (label) }
                        }
                    }
                    span #live role="status" aria-live="polite" { "connecting…" }
                    button #zone type="button" title="Show times in UTC or in this browser's zone" { "Times: UTC" }
                }
                @if shell.api_token || shell.admin {
                    details #tokens {
                        summary { "Tokens" }
                        form #token-form {
                            p.hint { "Kept in this tab's session storage and sent as a bearer header; never in an address." }
                            @if shell.api_token {
                                label { "API token " input #api-token type="password" autocomplete="off"; }
                            }
                            @if shell.admin {
                                label { "Admin token " input #admin-token type="password" autocomplete="off"; }
                            }
                            button type="submit" { "Save" }
                            " "
                            button #token-clear type="button" { "Forget" }
                        }
                    }
                }
                p #message role="alert" hidden {}
                p #stale role="alert" hidden {}
                main #main tabindex="-1" { (main) }
            }
        }
    }
}

pub fn overview(shell: Shell) -> Markup {
    let main = html! {
        h1 { "Overview" }
        section aria-labelledby="attention-title" {
            h2 #attention-title { "Needs attention" }
            ul #attention.attention aria-live="polite" {}
        }
        section aria-labelledby="counts-title" {
            h2 #counts-title { "Requests by status" }
            p.hint { "Every request in the database (all instances)." }
            div #status-counts.counts {}
        }
        section aria-labelledby="charts-title" {
            h2 #charts-title { "Last 15 minutes" }
            p.hint {
                "This instance's own traffic and deliveries, sampled every second and kept in its "
                "memory for 15 minutes: a restart starts them again (the counts above are the "
                "database's). Point at a chart to read its values at a time."
            }
            p.chart-controls {
                label { "Range "
                    select #chart-range {
                        option value="5" { "5 minutes" }
                        option value="15" selected { "15 minutes" }
                    }
                }
            }
            div #charts.charts {}
        }
    };
    layout(shell, Page::Overview, "Overview", None, main)
}

pub fn requests(shell: Shell) -> Markup {
    let main = html! {
        h1 { "Requests" }
        form #filters.filters method="get" action="/ui/requests" {
            label { "Mode "
                select name="mode" {
                    option value="" { "any" }
                    @for mode in Mode::ALL { option value=(mode.as_str()) { (mode.as_str()) } }
                }
            }
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for status in Status::ALL { option value=(status.as_str()) { (status.as_str()) } }
                }
            }
            label { "Created from (UTC) " input name="created_from" type="datetime-local" step="1"; }
            label { "to " input name="created_to" type="datetime-local" step="1"; }
            label { "Callback host " input name="callback_host" type="text" placeholder="host or host:port" maxlength="262"; }
            label title="The HTTP status the receiver answered the last attempt with: a code, or a class such as 4xx" {
                "Last HTTP status " input name="last_status" type="text" placeholder="404 or 5xx" size="7"
                    maxlength="3" pattern="[3-5]([0-9]{2}|[xX]{2})";
            }
            label title="Text of the last error (a callback's or a sync request's), any case" {
                "Error contains " input name="error_contains" type="search" placeholder="connection refused" maxlength="200";
            }
            label title="Finds requests by id; the other filters are not applied with it" {
                "Id or prefix " input name="id_prefix" type="text" placeholder="0193…" maxlength="36";
            }
            label { "Order "
                select name="order" {
                    option value="" { "newest first" }
                    option value="oldest" { "oldest first" }
                }
            }
            button type="submit" { "Filter" }
            " "
            a href="/ui/requests" { "Clear" }
        }
        @if shell.admin {
            section #bulk.bulk aria-label="Redeliver failed callbacks" {
                button #bulk-check type="button" { "Redeliver callback_failed requests matching this filter…" }
                div #bulk-confirm hidden {
                    p #bulk-count {}
                    button #bulk-go type="button" { "Redeliver" }
                    " "
                    button #bulk-cancel type="button" { "Cancel" }
                }
                p #bulk-result role="status" {}
            }
        }
        p.list-head {
            span #list-summary role="status" {}
            label.follow title="Update the newest page as requests change; off, the page stays as it is" {
                input #follow-live type="checkbox" checked;
                " Live"
            }
        }
        section #selection.bulk aria-label="Act on the selected requests" hidden {
            span #selection-count {}
            " "
            button #selected-cancel type="button" data-action="cancel" { "Cancel" }
            @if shell.admin {
                " "
                button #selected-retry type="button" data-action="retry" { "Retry now" }
                " "
                button #selected-redeliver type="button" data-action="redeliver" { "Redeliver" }
            }
            " "
            button #selection-clear type="button" { "Clear selection" }
            p #selection-result role="status" {}
        }
        div.table-wrap {
            table #list {
                thead { tr {
                    th scope="col" {
                        input #select-page type="checkbox" aria-label="Select every request on this page";
                    }
                    th scope="col" { "Id" } th scope="col" { "Mode" } th scope="col" { "Status" }
                    th scope="col" { "Created" } th scope="col" { "Callback" }
                    th scope="col" { "Attempts" } th scope="col" { "Last error" }
                } }
                tbody {}
            }
        }
        nav.pager aria-label="Pages" {
            a #first-page href="/ui/requests" hidden { "← First page" }
            " "
            a #older href="#" hidden { "Next page →" }
        }
    };
    layout(shell, Page::Requests, "Requests", None, main)
}

pub fn request(shell: Shell, id: &str) -> Markup {
    let main = html! {
        p { a href="/ui/requests" { "← Requests" } }
        h1 { "Request " code #request-title { (id) } }
        p #control hidden {
            button #cancel type="button" { "Cancel request" }
            " "
            span #cancel-result role="status" {}
        }
        @if shell.admin {
            p #actions hidden {
                button #redeliver type="button" { "Redeliver" }
                " "
                span #redeliver-result role="status" {}
            }
            p #retry-control hidden {
                button #retry-now type="button" { "Retry now" }
                " "
                span #retry-result role="status" {}
            }
        }
        section aria-labelledby="record-title" {
            h2 #record-title { "Record" }
            dl #record {}
        }
        section aria-labelledby="result-title" {
            h2 #result-title { "Result" }
            pre #result { "—" }
        }
        section aria-labelledby="attempts-title" {
            h2 #attempts-title { "Delivery attempts" }
            div #attempts {}
        }
    };
    layout(shell, Page::Request, "Request", Some(id), main)
}

pub fn destinations(shell: Shell) -> Markup {
    let main = html! {
        h1 { "Destinations" }
        @if shell.admin {
            p.hint { "Callback destinations this instance delivered to recently, and every paused, limited or held one: deliveries in flight, the last five minutes' outcomes, the circuit breaker (breakers are per instance; a reset applies to every instance), the rate limit, and the jobs waiting while something holds a destination back (counted across instances). A pause or a limit applies on every instance. Needs the admin token." }
            div.table-wrap {
                table #destinations {
                    thead { tr {
                        th scope="col" { "Destination" } th scope="col" { "State" }
                        th scope="col" { "Rate limit" } th scope="col" { "Held jobs" }
                        th scope="col" { "In flight" } th scope="col" { "Delivered (5 min)" }
                        th scope="col" { "Failed (5 min)" } th scope="col" { "Next probe" }
                        th scope="col" { "Actions" }
                    } }
                    tbody {}
                }
            }
            form #pause-form.filters aria-label="Pause a destination" {
                label for="pause-destination" { "Pause a destination not listed" }
                input #pause-destination type="text" required placeholder="https://host:port or a callback URL" maxlength="2048" {}
                button type="submit" { "Pause" }
            }
            form #limit-form.filters aria-label="Rate limit a destination" {
                label for="limit-destination" { "Rate limit a destination" }
                input #limit-destination type="text" required placeholder="https://host:port or a callback URL" maxlength="2048" {}
                label for="limit-per-second" { "Deliveries a second" }
                input #limit-per-second type="number" min="0.001" max="100000" step="any" placeholder="20" {}
                label for="limit-burst" { "Burst" }
                input #limit-burst type="number" min="1" max="100000" step="1" placeholder="one second's worth" {}
                button type="submit" data-limit="set" { "Set limit" }
                button type="button" data-limit="none" title="No limit for this destination, whatever APP_CALLBACK_RATE_PER_DESTINATION says" { "No limit" }
                button type="button" data-limit="default" title="Forget this destination's own limit: APP_CALLBACK_RATE_PER_DESTINATION applies" { "Use the default" }
            }
            p #destination-result role="status" {}
        } @else {
            p { "Destinations are an operator view: set APP_ADMIN_TOKEN to see them here." }
        }
    };
    layout(shell, Page::Destinations, "Destinations", None, main)
}
