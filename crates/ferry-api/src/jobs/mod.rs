//! `/jobs`: what a caller sends and what the job API answers.
//!
//! - `submit`: the body of `POST /jobs`, [`Envelope`] (`{"kind", "params"}` or `{"retry_of"}`),
//!   parsed strictly by [`parse_envelope`]; an export's body validated whole by [`parse_submit`].
//! - `view`: a job as the API shows it ([`JobView`], its links [`Download`] and [`FileLink`]),
//!   and the answers carrying it: [`Submitted`] (`POST`), [`JobList`] (`GET /jobs`) and
//!   [`Cancelled`] (`DELETE`). `GET /jobs/{id}` answers with the [`JobView`] itself.
//!
//! The rules a body must pass (kind names, job ids, the size limit, which members go together, an
//! export's params) are `ferry_core::jobs`'s; this module only reads the JSON around them.

mod submit;
mod view;

pub use submit::{Envelope, SubmitRequest, parse_envelope, parse_submit};
pub use view::{Cancelled, Download, FileLink, JobList, JobView, Submitted};
