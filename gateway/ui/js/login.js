// The login form: sends the user back to the page that asked for the login, and puts the
// cursor where typing is needed. The form works without it.
const next = new URLSearchParams(location.search).get('next');
const form = document.querySelector('.login-form');
if (next && next.startsWith('/ui/') && !next.startsWith('//')) {
  document.getElementById('next').value = next;
  // Kept in the address if the login fails and the form comes back.
  form.action = `/ui/login?next=${encodeURIComponent(next)}`;
}
const user = document.getElementById('username');
(user.value ? document.getElementById('password') : user).focus();
