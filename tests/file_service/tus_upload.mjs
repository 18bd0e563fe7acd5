// Uploads a file with tus-js-client the way a browser would, breaking it off mid-way and
// resuming it with a new Upload on the same upload URL.
//
//   node tests/file_service/tus_upload.mjs <endpoint> <client token> <file> <chunk size>
//
// The first Upload aborts once its progress passes 40% of the file; the second starts
// from the upload URL (tus-js-client HEADs it for the offset) and completes. Prints one
// JSON object for the test that runs it:
//   {"upload_url", "size", "acknowledged_at_abort", "sent_at_abort",
//    "resume_offset", "patches"}
// where acknowledged_at_abort is the offset the server had confirmed before the abort,
// and resume_offset the Upload-Offset of the first PATCH after it.
import { readFileSync } from 'node:fs'
import { basename } from 'node:path'
import { Upload } from 'tus-js-client'

const [endpoint, token, path, chunkSizeText] = process.argv.slice(2)
if (!endpoint || !token || !path || !chunkSizeText) {
  console.error('usage: tus_upload.mjs <endpoint> <client token> <file> <chunk size>')
  process.exit(2)
}
const data = readFileSync(path)
const chunkSize = Number(chunkSizeText)
const headers = { Authorization: `Bearer ${token}` }
const metadata = { filename: basename(path), filetype: 'application/octet-stream' }
let patches = 0

function countPatches(req) {
  if (req.getMethod() === 'PATCH') patches += 1
}

// The first attempt: resolves with what it saw when it aborted itself.
function uploadUntilAbort() {
  return new Promise((resolve, reject) => {
    let acknowledged = 0
    let aborted = false
    const upload = new Upload(data, {
      endpoint,
      headers,
      metadata,
      chunkSize,
      retryDelays: null,
      onBeforeRequest: countPatches,
      onChunkComplete(_chunk, accepted) {
        acknowledged = accepted
      },
      onProgress(sent, total) {
        if (aborted || sent < total * 0.4) return
        aborted = true
        const seen = { uploadUrl: upload.url, acknowledged, sent }
        upload.abort().then(() => resolve(seen), reject)
      },
      onSuccess() {
        reject(new Error('the upload completed before it could be aborted'))
      },
      onError: reject,
    })
    upload.start()
  })
}

// The second attempt, from the upload URL alone; resolves with the offset it resumed at.
function resume(uploadUrl) {
  return new Promise((resolve, reject) => {
    let resumeOffset = null
    const upload = new Upload(data, {
      uploadUrl,
      headers,
      metadata,
      chunkSize,
      // The aborted PATCH may still be finishing on the server: a 409 means HEAD again.
      retryDelays: [0, 50, 100, 200, 500, 1000],
      onBeforeRequest(req) {
        countPatches(req)
        if (req.getMethod() === 'PATCH' && resumeOffset === null) {
          resumeOffset = Number(req.getHeader('Upload-Offset'))
        }
      },
      onSuccess() {
        resolve(resumeOffset)
      },
      onError: reject,
    })
    upload.start()
  })
}

try {
  const first = await uploadUntilAbort()
  const resumeOffset = await resume(first.uploadUrl)
  console.log(
    JSON.stringify({
      upload_url: first.uploadUrl,
      size: data.length,
      acknowledged_at_abort: first.acknowledged,
      sent_at_abort: first.sent,
      resume_offset: resumeOffset,
      patches,
    }),
  )
} catch (error) {
  console.error(String(error))
  process.exit(1)
}
