// "Select all on this page" for the record lists: a checkbox with data-select-all ticks or
// clears every checkbox named by its value (name="staging_id") in the same form.
// A file, not inline script: the Content-Security-Policy allows scripts from this server only.
document.querySelectorAll("input[data-select-all]").forEach(function (all) {
  var form = all.form;
  if (!form) { return; }
  var name = all.getAttribute("data-select-all");
  var boxes = function () {
    return Array.prototype.slice.call(form.querySelectorAll('input[type="checkbox"][name="' + name + '"]'));
  };
  all.addEventListener("change", function () {
    boxes().forEach(function (box) { box.checked = all.checked; });
  });
  form.addEventListener("change", function (event) {
    if (event.target === all) { return; }
    var list = boxes();
    var ticked = list.filter(function (box) { return box.checked; }).length;
    all.checked = ticked === list.length && ticked > 0;
    all.indeterminate = ticked > 0 && ticked < list.length;
  });
});
