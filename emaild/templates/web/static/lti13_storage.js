// LTI 1.3 sign-in through the platform's postMessage storage (1EdTech "LTI
// Client Side postMessages" and "LTI postMessage Storage"), for browsers that
// block our cookies inside the course's iframe.
//
// mode "store" (the login page): lti.put_data the secret into the platform's
// frame, then go on to the platform's authorization URL.
// mode "check" (the launch page): lti.get_data it back and send it, with the
// state, to /lti/launch/confirm (a same-origin fetch with our own header,
// which a cross-site form cannot send), then go where it says.
// Only answers from the platform's origin count.
(function () {
  "use strict";
  var box = document.getElementById("lti13-storage");
  var status = document.getElementById("lti13-status");
  if (!box) { return; }
  var data = box.dataset;
  var origin = data.origin;
  var messageId = "emaild-" + Math.random().toString(36).slice(2) + Date.now().toString(36);
  var finished = false;

  function fail(text) {
    if (finished) { return; }
    finished = true;
    status.textContent = text;
    status.className = "message error";
  }

  function targetFrame() {
    var parent = window.opener || window.parent;
    if (!parent || parent === window) { return null; }
    if (data.target === "_parent") { return parent; }
    try { return parent.frames[data.target] || null; } catch (e) { return null; }
  }

  function ask(message, onAnswer) {
    var frame = targetFrame();
    if (!frame) {
      fail("We could not reach your course's page to check this sign-in. Launch again from your course.");
      return;
    }
    window.addEventListener("message", function (event) {
      var answer = event.data;
      if (event.origin !== origin || typeof answer !== "object" || answer === null ||
          answer.message_id !== messageId || answer.subject !== message.subject + ".response") {
        return;
      }
      if (answer.error) {
        fail("Your course could not keep this sign-in (" + (answer.error.code || "error") +
             "). Launch again from your course.");
        return;
      }
      onAnswer(answer);
    });
    message.message_id = messageId;
    frame.postMessage(message, origin);
    setTimeout(function () {
      fail("Your course did not answer. Launch again from your course, or open the tool in a new window.");
    }, 10000);
  }

  if (data.mode === "store") {
    ask({subject: "lti.put_data", key: data.key, value: data.value}, function () {
      finished = true;
      window.location.replace(data.next);
    });
  } else if (data.mode === "check") {
    ask({subject: "lti.get_data", key: data.key}, function (answer) {
      finished = true;
      var body = "state=" + encodeURIComponent(data.state) +
                 "&value=" + encodeURIComponent(answer.value || "");
      fetch(data.confirm, {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/x-www-form-urlencoded", "X-Emaild-Lti-Storage": "1"},
        body: body
      }).then(function (response) {
        return response.json().then(function (result) {
          if (response.ok && result.location) {
            window.location.replace(result.location);
          } else {
            finished = false;
            fail(result.error || "This sign-in was refused. Launch again from your course.");
          }
        });
      }).catch(function () {
        finished = false;
        fail("We could not finish this sign-in. Launch again from your course.");
      });
    });
  }
})();
