"""The words on the synthetic screens: widget labels, window chrome, icon names and filler prose.

ASCII only: the bundled font's coverage beyond ASCII is not something to rely on.
"""

from __future__ import annotations


def key(text: str) -> str:
    """The uniqueness key of a label: "Name", "Name:" and "name" read the same to a user."""
    return text.lower().rstrip(":.?! ").strip()


def words(text: str) -> tuple[str, ...]:
    """A `|`-separated word list as a tuple, blanks dropped."""
    return tuple(w.strip() for w in text.split("|") if w.strip())


BUTTONS = words(
    "Save|Open|Cancel|OK|Apply|Reset|Close|Next|Back|Continue|Submit|Send|Delete|Remove|Add|Create|Edit|"
    "Update|Upload|Download|Export|Import|Print|Share|Copy|Paste|Undo|Redo|Search|Sign in|Sign up|Log out|"
    "Retry|Refresh|Confirm|Accept|Decline|Browse...|Finish|Skip|Install|Uninstall|Connect|Disconnect|"
    "Subscribe|Archive|Restore|Duplicate|Rename|Move|Publish|Preview|Compare|Merge|Sync now|Start|Stop|"
    "Pause|Resume|Join|Invite|Approve|Reject|Checkout|Pay now|Add to cart|Save draft|Save as...|Get started|"
    "View all|Try again|Go back|Load more|Clear all|Select all|New folder|New file|Add user|Run|Build|Deploy|"
    "Test connection|Generate|Convert|Translate|Attach|Schedule|Reply|Forward|Mark as read|Add member|"
    "Change|Verify|Send code|Done|Discard|Keep editing|Save changes|Create project|Add payment method"
)
BUTTON_GROUPS = (
    ("Cancel", "Save"), ("Cancel", "OK"), ("Back", "Next"), ("Discard", "Save changes"), ("Cancel", "Apply"),
    ("Skip", "Continue"), ("Cancel", "Delete"), ("Decline", "Accept"), ("Reset", "Apply", "OK"),
    ("Cancel", "Create project"), ("Back", "Finish"), ("Keep editing", "Discard"), ("Cancel", "Send"),
    ("Help", "Cancel", "Print"), ("Cancel", "Sign in"), ("Cancel", "Install"),
)  # fmt: skip
CHECKBOXES = words(
    "Remember me|Keep me signed in|Show hidden files|Enable notifications|Send usage statistics|"
    "Auto-save every 5 minutes|Check spelling as you type|Start at login|Show line numbers|Wrap long lines|"
    "Open links in new tab|Block pop-ups|Enable two-factor authentication|Subscribe to newsletter|"
    "I agree to the terms|Show preview pane|Play sounds|Sync across devices|Compress images|"
    "Include subfolders|Match case|Whole words only|Ask before closing|Show toolbar|Hide completed tasks|"
    "Allow comments|Make profile public|Email me a copy|Use system proxy|Enable hardware acceleration|"
    "Show grid|Snap to grid|Automatic updates|Restore previous session|Download over Wi-Fi only|Mute all|"
    "Show full path|Confirm before deleting|Print in color|Collate copies|Read receipts|Show weekends"
)
SWITCHES = words(
    "Wi-Fi|Bluetooth|Airplane mode|Do not disturb|Location services|Night light|Battery saver|"
    "Auto-brightness|Dark theme|Push notifications|Auto-update apps|Mobile hotspot|Focus mode|"
    "Background sync|Cloud backup|Developer mode|Screen reader|High contrast|Live captions|Data saver"
)
# (label, placeholder, typed values)
FIELDS = (
    ("Name", "Your name", "Alice Johnson|Bob Smith|Maria Garcia"),
    ("Full name", "Enter full name", "Chen Wei|Priya Patel|Tom Becker"),
    ("First name", "e.g. Olivia", "Olivia|Lucas|Amara"),
    ("Last name", "e.g. Nguyen", "Nguyen|Kowalski|Okafor"),
    ("Email", "name@example.com", "alice@mail.com|j.doe@corp.net|sam@studio.io"),
    ("Username", "Choose a username", "alice_j|bsmith42|dev-maria"),
    ("Password", "Enter password", "********|************"),
    ("Phone", "+1 555 000 0000", "+44 20 7946 0958|+1 415 555 0132"),
    ("Address", "Street and number", "42 Market Street|7 Elm Road|221B Baker Street"),
    ("City", "e.g. Berlin", "Berlin|Toronto|Osaka|Lisbon"),
    ("Zip code", "ZIP", "94107|10115|SW1A 1AA"),
    ("Company", "Company name", "Acme Corp|Globex Ltd|Initech"),
    ("Website", "https://", "https://example.org|www.acme.com"),
    ("Subject", "Add a subject", "Weekly report|Lunch on Friday?|Invoice 4821"),
    ("Title", "Untitled", "Q3 roadmap|Trip to Rome|Release checklist"),
    ("Description", "Add a description", "Draft for review|Second revision"),
    ("Tags", "Add tags", "design, ui|urgent|travel, 2024"),
    ("Project name", "my-project", "website-redesign|data-pipeline"),
    ("File name", "document.txt", "report_final.pdf|photo_001.jpg|backup.zip"),
    ("Server", "hostname", "mail.example.com|10.0.0.12|db-01.internal"),
    ("Port", "8080", "443|5432|22"),
    ("API key", "Paste your key", "sk-4f9a...c21e|key_live_7b2d"),
    ("Display name", "How others see you", "Ali|Captain B|mgarcia"),
    ("Due date", "MM/DD/YYYY", "05/14/2024|11/30/2024"),
    ("Amount", "0.00", "125.00|49.99|1,200.00"),
    ("Quantity", "1", "3|12|250"),
    ("Card number", "1234 5678 9012 3456", "4242 4242 4242 4242"),
    ("Recipient", "To", "team@acme.com|Bob Smith"),
    ("Location", "Add location", "Room 4B|Zoom call|Main office"),
    ("Search", "Type keywords", "quarterly report|invoice|holiday"),
)
DROPDOWNS = (
    ("Language", "English|Deutsch|Francais|Espanol|Italiano|Portugues"),
    ("Theme", "Light|Dark|System default"),
    ("Country", "United States|Canada|Germany|Japan|Brazil|India"),
    ("Font size", "Small|Medium|Large|12 pt|14 pt"),
    ("Sort by", "Name|Date modified|Size|Type"),
    ("Time zone", "UTC|UTC+01:00 Berlin|UTC-05:00 New York|UTC+09:00 Tokyo"),
    ("Format", "PDF|PNG|CSV|Plain text|JPEG"),
    ("Priority", "Low|Normal|High|Urgent"),
    ("Currency", "USD|EUR|GBP|JPY"),
    ("Quality", "Auto|720p|1080p|4K"),
    ("Status", "To do|In progress|Done|Blocked"),
    ("Role", "Viewer|Editor|Admin|Owner"),
    ("Repeat", "Never|Daily|Weekly|Monthly"),
    ("Paper size", "A4|Letter|Legal|A3"),
    ("Encoding", "UTF-8|ASCII|Latin-1|UTF-16"),
    ("Start week on", "Sunday|Monday|Saturday"),
)
RADIOS = (
    ("Size", "Small|Medium|Large"),
    ("Plan", "Free|Pro|Enterprise"),
    ("Shipping", "Standard|Express|Overnight"),
    ("Orientation", "Portrait|Landscape"),
    ("Layout", "List|Grid|Details"),
    ("Frequency", "Hourly|Every day|Every week"),
    ("Payment", "Credit card|PayPal|Bank transfer"),
    ("Visibility", "Public|Private|Team only"),
    ("Units", "Metric|Imperial"),
    ("On startup", "Blank page|Home page|Last session"),
    ("Alignment", "Left|Center|Right|Justify"),
    ("Color mode", "Color|Grayscale|Black and white"),
    ("Pages", "All pages|Current page|Custom range"),
    ("Billing", "Monthly|Yearly"),
)
LINKS = words(
    "Forgot password?|Learn more|Privacy policy|Terms of service|Help center|Create an account|View details|"
    "Show all|Contact support|Manage subscriptions|Edit profile|Release notes|Advanced options|"
    "Keyboard shortcuts|What's new|Report a problem|Open in browser|Download the app|See pricing|"
    "Documentation|Change email|Unsubscribe from all|View on GitHub|Restore defaults|Need help?|"
    "Resend code|Use another account|Show more"
)
TEXTS = words(
    "Changes are saved automatically.|Your trial ends in 12 days.|Last synced 5 minutes ago.|"
    "No items match your filter.|Storage used: 3.2 GB of 15 GB|Passwords need at least 8 characters.|"
    "You have 3 unread messages.|This action cannot be undone.|Select the files you want to upload.|"
    "All systems operational.|Updates are available for 2 apps.|Connected to office-network|"
    "Your profile is 80% complete.|Backup completed on May 3.|Enter the code sent to your phone.|"
    "Drag files here to upload.|Version 2.4.1 (build 318)|Signed in as alice@example.com|"
    "The document was shared with you.|Printer is offline.|Battery: 64% remaining|Next meeting at 3:30 PM|"
    "Download speed: 12.4 MB/s|Free shipping on orders over $50|14 files, 28.6 MB|Last edited by Sam"
)
HEADINGS = words(
    "Settings|Account|Preferences|Sign in|Create account|Profile|Notifications|Privacy and security|"
    "New project|Export options|Print|Network|Display|Sound|Billing|Team members|Upload files|"
    "Connect a device|General|Appearance|Checkout|Welcome back|Shipping details|Edit event|Compose message|"
    "Storage|Software update|Accessibility|Search results|Dashboard|Payment details|Personal information"
)
SLIDERS = words(
    "Volume|Brightness|Zoom|Opacity|Speed|Contrast|Balance|Font scale|Bass|Treble|Saturation|Timeout|"
    "Sensitivity|Brush size|Playback rate"
)
TAB_SETS = (
    ("General", "Advanced", "Privacy", "Sharing", "Security"),
    ("Details", "Permissions", "History", "Versions"),
    ("Display", "Network", "Sound", "Keyboard", "Power"),
    ("Overview", "Activity", "Files", "Comments", "Members"),
    ("Profile", "Billing", "Integrations", "Appearance", "Shortcuts"),
    ("Home", "Recent", "Favorites", "Shared"),
)  # fmt: skip
SIDEBAR_SETS = (
    ("Inbox", "Starred", "Sent", "Drafts", "Spam", "Archive", "Trash"),
    ("Recent", "Documents", "Downloads", "Pictures", "Music", "Desktop", "Shared with me"),
    ("System", "Devices", "Network & internet", "Personalization", "Apps", "Accounts", "Time & language"),
    ("Overview", "Issues", "Pull requests", "Wiki", "Insights", "Members", "Releases"),
    ("Today", "Upcoming", "Anytime", "Someday", "Logbook", "Projects"),
    ("Library", "Playlists", "Artists", "Albums", "Podcasts", "Radio"),
)  # fmt: skip
MENU_SETS = (
    ("File", "Edit", "View", "Insert", "Format", "Tools", "Table", "Window", "Help"),
    ("File", "Edit", "View", "History", "Bookmarks", "Tools", "Help"),
    ("File", "Edit", "Selection", "View", "Go", "Run", "Terminal", "Help"),
    ("File", "Home", "Insert", "Design", "Layout", "Review", "View", "Help"),
    ("Mail", "Edit", "View", "Mailbox", "Message", "Format", "Window", "Help"),
    ("File", "Edit", "Image", "Layer", "Filters", "Window", "Help"),
)  # fmt: skip
APPS = words(
    "Writer|Sheets|Mail|Files|Settings|Photos|Music|Calendar|Notes|Code|Browser|Terminal|Maps|Chat|Tasks|"
    "Slides|Contacts|Weather|Store|Paint"
)
DOCS = words(
    "Untitled|Report.docx|Budget 2024.xlsx|notes.txt|main.py|Inbox|Quarterly review|Vacation photos|"
    "README.md|Invoice 4821|Meeting agenda|Project plan|index.html|Shopping list"
)
STATUS_TEXTS = words(
    "Ready|Saved|3 items selected|Ln 14, Col 2|Page 1 of 4|Connected|Syncing...|12 messages|"
    "Word count: 1,204|100%|UTF-8|Offline|2 errors, 1 warning|Updated just now"
)
ICONS = (
    "settings", "search", "delete", "favorite", "home", "add", "notifications", "profile", "folder", "edit",
    "refresh", "download", "upload", "like", "lock", "mail", "calendar", "play", "info", "help", "menu",
    "more options", "share", "print", "save", "back", "forward", "filter", "bookmark", "image",
)  # fmt: skip
WINDOW_ICONS = ("close", "minimize", "maximize")
# Filler prose for document panels: Latin, so it can never be mistaken for a target's English label.
LOREM = tuple(
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
    "commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur".split()
)
